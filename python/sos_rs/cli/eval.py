"""`sos eval RUN`: validation loss and bits per byte, on prepared shards or on a text file; with
`--task arithmetic|logic`, exact-match accuracy of greedy completions of held-out synthetic
prompts (`sos synth`'s generators on a seed no training file uses)."""

from __future__ import annotations

import json
import math
import pathlib
import sys

import numpy as np


def add_parser(sub) -> None:
    p = sub.add_parser("eval", help="validation loss and bits per byte of a run", description=__doc__)
    p.add_argument("run", help="run folder or checkpoint folder")
    src = p.add_mutually_exclusive_group()
    src.add_argument("--data", help="prepared folder (its validation split); default: the run's own data")
    src.add_argument("--text", help="a UTF-8 text file, scored in windows of the model's context")
    src.add_argument("--task", choices=("arithmetic", "compare", "logic"), help="greedy exact-match accuracy on a task")
    p.add_argument("--n", type=int, default=200, help="--task: prompts to score")
    p.add_argument("--batches", type=int, default=0, help="batches of the split to score (0 = all)")
    p.set_defaults(func=run)


def eval_text(model, tok, text: str) -> dict:
    ids = tok.encode(text).ids
    if len(ids) < 2:
        raise ValueError("the text is too short to score (needs at least 2 tokens)")
    t = model.config.max_seq_len
    total, count = 0.0, 0
    for s in range(0, len(ids) - 1, t):
        window = ids[s : s + t + 1]
        if len(window) < 2:
            break
        x = np.asarray([window[:-1]], dtype=np.int64)
        y = np.asarray([window[1:]], dtype=np.int64)
        total += model.eval_loss(x, y) * y.size  # inference mode: no regularisers
        count += y.size
    loss = total / count
    return {"loss": loss, "bits_per_byte": loss * count / math.log(2) / len(text.encode("utf-8")), "tokens": count}


def eval_task(model, tok, eot_id, task: str, n: int) -> dict:
    """Greedy completion of n held-out prompts; an answer counts when the completion, up to the
    end of its line, equals the expected answer exactly."""
    from ..data.synth import EVAL_SEED, examples
    from ..sample import generate

    if n < 1:
        raise ValueError(f"--n must be positive, got {n}")
    correct = 0
    shown: list = []
    for q, a in examples(task, n, EVAL_SEED):
        prompt = ([eot_id] if eot_id is not None else []) + tok.encode(q).ids
        budget = len(tok.encode(a).ids) + 4
        new = generate(model, prompt, budget, temperature=1.0, top_k=1, seed=0, stop_id=eot_id)
        text = tok.decode([t for t in new if t != eot_id]).split("\n")[0]
        ok = text.strip() == a.strip()
        correct += ok
        if len(shown) < 3:
            shown.append({"prompt": q, "expected": a.strip(), "got": text.strip()})
    return {"task": task, "n": n, "accuracy": correct / n, "correct": correct, "examples": shown}


def run(args) -> int:
    from ..train.checkpoint import CheckpointError
    from ..train.config import from_dict
    from ..train.data_setup import DataError, DataSetup
    from ..train.evaluate import evaluate
    from ..train.run_io import load_model, resolve_data_dirs, tokenizer_for

    try:
        model, state, folder = load_model(args.run)
        if args.task:
            tok, _ = tokenizer_for(state, folder)
            result = eval_task(model, tok, state.get("eot_id"), args.task, args.n)
        elif args.text:
            tok, _ = tokenizer_for(state, folder)
            result = eval_text(model, tok, pathlib.Path(args.text).read_text(encoding="utf-8"))
        else:
            raw = resolve_data_dirs(state["train_config"], state, folder)
            if args.data:
                raw["data"]["dir"] = args.data
                raw["data"]["mixture"] = []
            data = DataSetup(from_dict(raw))
            if data.vocab_size != model.config.vocab_size:
                raise DataError(f"{data.dir} has vocabulary {data.vocab_size}; the model has {model.config.vocab_size}")
            result = evaluate(model, data.val_belt(), args.batches, data.val_bytes_per_token)
    except (CheckpointError, DataError, FileNotFoundError, UnicodeDecodeError, ValueError) as e:
        print(f"sos eval: {e}", file=sys.stderr)
        return 2
    print(json.dumps({"checkpoint": str(folder), **result}))
    return 0
