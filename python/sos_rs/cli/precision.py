"""`sos precision`: the error of float16, bfloat16 and float32 against float64 for one matrix
product and for stacks of dense blocks (forward and every parameter gradient), median over seeds,
beside the paper's 5,810x (one operation) and 23,225x (at depth), with a verdict per claim.
The arithmetic is emulated exactly in numpy (sos_rs/precision/formats.py says how)."""

from __future__ import annotations

import json
import pathlib
import sys


def add_parser(sub) -> None:
    p = sub.add_parser("precision", help="measure f16/bf16/f32 error against f64 (SPEC §9)", description=__doc__)
    p.add_argument("--seeds", type=int, default=100, help="seeds; figures are medians over them (default 100)")
    p.add_argument("--quick", action="store_true", help="10 seeds, depths 1 and 10 (seconds instead of minutes)")
    p.add_argument("--depths", default="1,10,50,100", help="comma-separated stack depths (default 1,10,50,100)")
    p.add_argument("--d", type=int, default=512, help="dimension of the single product (default 512)")
    p.add_argument("--rows", type=int, default=32, help="rows of X in the single product (default 32)")
    p.add_argument("--block-d", type=int, default=64, help="d_model of the stacked blocks (default 64)")
    p.add_argument("--block-heads", type=int, default=4, help="attention heads of the blocks (default 4)")
    p.add_argument("--block-ffn", type=int, default=192, help="SwiGLU width of the blocks (default 192)")
    p.add_argument("--block-seq", type=int, default=32, help="sequence length through the blocks (default 32)")
    p.add_argument("--json", metavar="FILE", help="write every measurement and verdict as JSON")
    p.add_argument("--plot", metavar="PNG", help="plot error against depth (log scale) to this PNG")
    p.set_defaults(func=run)


def _config(args):
    from ..precision.block import BlockShape
    from ..precision.study import StudyConfig

    try:
        depths = [int(x) for x in args.depths.split(",") if x.strip()]
    except ValueError:
        raise ValueError(f"--depths must be comma-separated integers, got {args.depths!r}") from None
    seeds = 10 if args.quick and args.seeds == 100 else args.seeds
    if args.quick and args.depths == "1,10,50,100":
        depths = [1, 10]
    problems = []
    if seeds < 1:
        problems.append("--seeds must be at least 1")
    if not depths or min(depths) < 1:
        problems.append("--depths must be positive integers")
    for flag, value in (("--d", args.d), ("--rows", args.rows), ("--block-seq", args.block_seq)):
        if value < 1:
            problems.append(f"{flag} must be positive")
    if args.block_heads < 1 or args.block_d % args.block_heads or (args.block_d // args.block_heads) % 2:
        problems.append("--block-d must be a multiple of --block-heads with an even head size (RoPE)")
    if args.block_ffn < 1:
        problems.append("--block-ffn must be positive")
    if problems:
        raise ValueError("; ".join(problems))
    shape = BlockShape(args.block_d, args.block_heads, args.block_ffn, args.block_seq)
    return StudyConfig(seeds=seeds, d=args.d, rows=args.rows, depths=sorted(set(depths)), block=shape)


def run(args) -> int:
    from ..precision.study import format_report, plot, run_study

    for out in (args.json, args.plot):  # checked before the minutes of measuring, not after
        if out and not pathlib.Path(out).resolve().parent.is_dir():
            print(f"sos precision: cannot write {out}: its folder does not exist", file=sys.stderr)
            return 2
    try:
        cfg = _config(args)
    except ValueError as e:
        print(f"sos precision: {e}", file=sys.stderr)
        return 2
    result = run_study(cfg, progress=lambda msg: print(msg, file=sys.stderr, flush=True))
    print(format_report(result))
    if args.json:
        pathlib.Path(args.json).write_text(json.dumps(result, indent=1))
        print(f"wrote {args.json}")
    if args.plot:
        plot(result, args.plot)
        print(f"wrote {args.plot}")
    return 0
