"""`sos train CONFIG.toml`: train a model as the config says (see sos_rs/train/config.py)."""

from __future__ import annotations

import json
import pathlib
import sys


def add_parser(sub) -> None:
    p = sub.add_parser("train", help="train a model from a TOML config", description=__doc__)
    p.add_argument("config", help="TOML file with [model], [data], [optim], [schedule], [run]")
    p.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="SECTION.KEY=VALUE",
        help="override one field, e.g. --set optim.lr=1e-3 (repeatable)",
    )
    p.add_argument("--steps", type=int, help="same as --set run.steps=N")
    p.add_argument("--out", help="same as --set run.out=DIR")
    p.add_argument("--threads", type=int, help="same as --set run.threads=N")
    p.add_argument("--max-minutes", type=float, help="same as --set run.max_minutes=M")
    p.add_argument(
        "--resume", default="auto", help="auto (newest valid checkpoint, default), none, or a checkpoint folder"
    )
    p.set_defaults(func=run)


def run(args) -> int:
    from ..dist import DistError, active
    from ..train import checkpoint as ckpt
    from ..train.config import ConfigError, load
    from ..train.data_setup import DataError
    from ..train.trainer import Trainer, TrainingError

    overrides = list(args.overrides)
    for flag, key in (
        ("steps", "run.steps"),
        ("out", "run.out"),
        ("threads", "run.threads"),
        ("max_minutes", "run.max_minutes"),
    ):
        value = getattr(args, flag)
        if value is not None:
            overrides.append(f"{key}={json.dumps(value)}")
    try:
        cfg = load(args.config, overrides)
        trainer = Trainer(cfg, resume=args.resume)
        result = trainer.train()
        if not result.get("interrupted") and cfg.run.sample_tokens > 0 and trainer.dist.is_root:
            text = trainer._write_sample_final()
            result["sample"] = text
    except (ConfigError, DataError, TrainingError, ckpt.CheckpointError, DistError) as e:
        group = active()
        agreed = isinstance(e, DistError) and e.agreed
        if group is None or group.is_root or not agreed:  # an agreed error is printed once, by rank 0
            where = f" (rank {group.rank} of {group.world})" if group is not None and group.world > 1 else ""
            print(f"sos train{where}: {e}", file=sys.stderr, flush=True)
        return group.fail(2, e) if group is not None else 2
    if not trainer.dist.is_root:  # rank 0 alone writes the summary
        return 130 if result.get("interrupted") else 0
    keys = (
        "step",
        "val_loss",
        "val_bpb",
        "val_split",
        "elapsed_s",
        "cpu_s",
        "cpu_hours",
        "cost",
        "tokens_seen",
        "peak_rss_mb",
    )
    summary = {k: result[k] for k in keys if k in result}
    out = pathlib.Path(cfg.run.out)
    (out / "summary.json").write_text(json.dumps({"family": trainer.family, **summary}, indent=1))
    print("done: " + json.dumps(summary))
    return 130 if result.get("interrupted") else 0
