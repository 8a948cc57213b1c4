"""The curriculum experiment (issue 9): configs/curriculum.toml (language -> logic -> transfer ->
depth) against configs/curriculum_uniform.toml (one uniform mixture, the final depth from step
0), at the same token budget and final size. Prints a table of per-source validation bits per
byte, greedy exact-match accuracy on held-out arithmetic and logic prompts, tokens and wall
time, and writes it as JSON.

    python -m benches.curriculum_experiment [--skip-train] [--n 200] [--json runs/curriculum-experiment.json]

Needs the prepared data named in the configs (see the header of configs/curriculum.toml)."""

from __future__ import annotations

import argparse
import json
import pathlib

RUNS = {"curriculum": "configs/curriculum.toml", "uniform": "configs/curriculum_uniform.toml"}


def score(run: str, n: int, batches: int) -> dict:
    from sos_rs.cli.eval import eval_task
    from sos_rs.data import Belt
    from sos_rs.train.config import from_dict
    from sos_rs.train.curriculum import find_sources
    from sos_rs.train.evaluate import evaluate
    from sos_rs.train.run_io import load_model, resolve_data_dirs, tokenizer_for

    model, state, folder = load_model(run)
    cfg = from_dict(resolve_data_dirs(state["train_config"], state, folder))
    tok, _ = tokenizer_for(state, folder)
    data_dir = pathlib.Path(cfg.data.dir)
    sources = find_sources(
        data_dir, cfg.curriculum.dirs if cfg.curriculum else [], (data_dir / "tokenizer.json").read_bytes()
    )
    out = {"step": state["step"], "wall_s": state["elapsed_s"], "n_layers": model.config.n_layers}
    for label, src in sorted(sources.items()):
        belt = Belt(src.val, seq_len=64, batch_size=16, seed=0)
        out[f"val_bpb.{label}"] = evaluate(model, belt, batches, src.val_bytes_per_token)["val_bpb"]
    for task in ("arithmetic", "logic"):
        out[f"acc.{task}"] = eval_task(model, tok, state.get("eot_id"), task, n)["accuracy"]
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--skip-train", action="store_true", help="score existing runs only")
    ap.add_argument("--n", type=int, default=200, help="prompts per task")
    ap.add_argument("--batches", type=int, default=0, help="validation batches per source (0 = all)")
    ap.add_argument("--json", default="runs/curriculum-experiment.json")
    args = ap.parse_args()
    from sos_rs.train.config import load
    from sos_rs.train.metrics import read_metrics
    from sos_rs.train.trainer import Trainer

    rows = {}
    for name, path in RUNS.items():
        cfg = load(path)
        if not args.skip_train:
            Trainer(cfg, resume="auto").train()
        rows[name] = score(cfg.run.out, args.n, args.batches)
        recs = read_metrics(pathlib.Path(cfg.run.out) / "metrics.jsonl")
        rows[name]["tokens"] = max((r.get("tokens_seen", 0) for r in recs), default=0)
    keys = sorted({k for r in rows.values() for k in r})
    print(f"{'':24}" + "".join(f"{n:>14}" for n in rows))
    for k in keys:
        print(
            f"{k:24}"
            + "".join(f"{rows[n][k]:>14.4g}" if isinstance(rows[n][k], float) else f"{rows[n][k]:>14}" for n in rows)
        )
    pathlib.Path(args.json).parent.mkdir(parents=True, exist_ok=True)
    pathlib.Path(args.json).write_text(json.dumps(rows, indent=1))


if __name__ == "__main__":
    main()
