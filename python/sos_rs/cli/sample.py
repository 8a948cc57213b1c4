"""`sos sample RUN`: generate text from a trained run (or a checkpoint folder) with a KV cache.
Generation stops at end-of-text (the end of a document) unless --ignore-eot is given."""

from __future__ import annotations

import sys


def add_parser(sub) -> None:
    p = sub.add_parser("sample", help="generate text from a run or checkpoint", description=__doc__)
    p.add_argument("run", help="run folder (newest valid checkpoint) or checkpoint folder")
    p.add_argument("--prompt", default="", help="text to continue (default: start of a document)")
    p.add_argument("--max-new-tokens", type=int, default=200)
    p.add_argument("--temperature", type=float, default=0.8)
    p.add_argument("--top-k", type=int, default=200)
    p.add_argument("--top-p", type=float, default=1.0)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--num-samples", type=int, default=1)
    p.add_argument(
        "--ignore-eot",
        action="store_true",
        help="continue past end-of-text (shown as a blank line) instead of stopping there",
    )
    p.set_defaults(func=run)


def run(args) -> int:
    from ..sample import decode, generate
    from ..train.checkpoint import CheckpointError
    from ..train.run_io import load_model, tokenizer_for

    try:
        model, state, folder = load_model(args.run)
        tok, _ = tokenizer_for(state, folder)
    except (CheckpointError, FileNotFoundError) as e:
        print(f"sos sample: {e}", file=sys.stderr)
        return 2
    eot = state.get("eot_id")
    prompt = tok.encode(args.prompt).ids if args.prompt else [eot if eot is not None else 0]
    stop = None if args.ignore_eot else eot
    for i in range(args.num_samples):
        new = generate(
            model, prompt, args.max_new_tokens, args.temperature, args.top_k, args.top_p, args.seed + i, stop_id=stop
        )
        if stop is not None and new and new[-1] == stop:
            new = new[:-1]  # the document ended here
        print(args.prompt + decode(tok, new, eot))
        if args.num_samples > 1:
            print("-" * 40)
    return 0
