"""`sos synth KIND --n N --seed S --out FILE.jsonl`: deterministic synthetic reasoning text
(arithmetic with carries, comparison and sorting, propositional logic and syllogisms) for the
curriculum's logic stage; `sos prepare logic=FILE.jsonl ...` turns it into a labelled source."""

from __future__ import annotations

import pathlib
import sys


def add_parser(sub) -> None:
    from ..data.synth import KINDS

    p = sub.add_parser("synth", help="generate synthetic reasoning text (JSON lines)", description=__doc__)
    p.add_argument("kind", choices=KINDS, help="arithmetic | compare | logic | reasoning (all three mixed)")
    p.add_argument("--n", type=int, required=True, help="examples to write")
    p.add_argument("--seed", type=int, default=0, help="seed; the same seed writes the same file")
    p.add_argument("--out", required=True, help="output .jsonl file")
    p.set_defaults(func=run)


def run(args) -> int:
    from ..data.synth import EVAL_SEED, write_jsonl

    if args.n < 1:
        print(f"sos synth: --n must be positive, got {args.n}", file=sys.stderr)
        return 2
    if args.seed == EVAL_SEED:
        print(f"sos synth: seed {EVAL_SEED} is reserved for `sos eval --task` prompts", file=sys.stderr)
        return 2
    out = pathlib.Path(args.out)
    if out.suffix not in (".jsonl", ".ndjson"):
        print(f"sos synth: --out must end in .jsonl, got {out}", file=sys.stderr)
        return 2
    size = write_jsonl(args.kind, args.n, args.seed, out)
    print(f"wrote {args.n} {args.kind} examples ({size / 1e6:.2f} MB) to {out}")
    return 0
