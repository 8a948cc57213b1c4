"""`sos fuse HOST DONOR --graft attention --out RUN`: graft the donor's attention into the host's
layers (SPEC §6.5). HOST and DONOR are dense runs (or checkpoints), or Hugging Face folders that
`sos import` reads. Steps, each timed in the report:
  align  orthogonal Procrustes on the embeddings of the tokens both vocabularies share (matched by
         string; semi-orthogonal least squares when the widths differ); residual reported
  graft  the donor's attention projections (and q/k norms) mapped through the alignment into the
         host's layers (`--layers`, default proportional by depth), regrouped to the host's heads
  heal   with `--heal-steps N --data DIR` (prepared with the host's tokenizer): N fine-tuning
         steps, the first `--heal-grafted-first K` of them on the grafted and boundary parameters only
The fused model speaks the host's tokenizer. Without healing RUN is the fused run; with it the
fused run is RUN/fused and RUN the healed one. The report (stdout, and RUN/fuse_report.json) gives
the loss and bits per byte of host, donor, fused and healed on the same held-out text
(`--eval-text FILE`; each model with its own tokenizer, so bits per byte is the comparable figure)."""

from __future__ import annotations

import json
import pathlib
import shutil
import sys
import time
from typing import Optional


def add_parser(sub) -> None:
    p = sub.add_parser("fuse", help="graft one model's attention into another", description=__doc__)
    p.add_argument("host", help="host run, checkpoint or Hugging Face folder (keeps its body and tokenizer)")
    p.add_argument("donor", help="donor run, checkpoint or Hugging Face folder (gives its attention)")
    p.add_argument("--graft", required=True, choices=["attention"], help="what to graft")
    p.add_argument("--out", required=True, metavar="RUN", help="run folder to write (must be empty or absent)")
    p.add_argument("--layers", metavar="LIST", help="donor layer per host layer, e.g. 0,0,1,1 (default: by depth)")
    p.add_argument("--heal-steps", type=int, default=0, metavar="N", help="fine-tuning steps after the graft")
    p.add_argument("--heal-grafted-first", type=int, default=0, metavar="K", help="first K heal steps: grafted only")
    p.add_argument("--data", metavar="DIR", help="prepared data (host tokenizer) for healing and evaluation")
    p.add_argument("--eval-text", metavar="FILE", help="held-out text every model is scored on")
    p.add_argument("--seq-len", type=int, default=128, help="heal: tokens per row (default 128)")
    p.add_argument("--batch-size", type=int, default=8, help="heal: rows per step (default 8)")
    p.add_argument("--lr", type=float, default=1e-3, help="heal: peak learning rate (default 1e-3)")
    p.add_argument("--threads", type=int, default=0, help="compute threads (0 = automatic)")
    p.set_defaults(func=run)


def load_any(path: str):
    """(model, tokenizer, tokenizer path) of a run, a checkpoint or a Hugging Face folder."""
    from tokenizers import Tokenizer

    from ..hf.importer import load_dense
    from ..train.run_io import load_model, tokenizer_for

    p = pathlib.Path(path)
    if (p / "config.json").is_file() and not (p / "checkpoints").is_dir() and not (p / "state.json").is_file():
        model, _, _ = load_dense(p)
        if not (p / "tokenizer.json").is_file():
            raise FileNotFoundError(f"{p} has no tokenizer.json")
        return model, Tokenizer.from_file(str(p / "tokenizer.json")), p / "tokenizer.json"
    model, state, folder = load_model(path)
    tok, tok_path = tokenizer_for(state, folder)
    return model, tok, tok_path


def score(model, tok, text: str) -> dict:
    from .eval import eval_text

    r = eval_text(model, tok, text)
    return {"loss": round(r["loss"], 4), "bits_per_byte": round(r["bits_per_byte"], 4), "tokens": r["tokens"]}


def held_out_text(args) -> Optional[str]:
    return pathlib.Path(args.eval_text).read_text(encoding="utf-8") if args.eval_text else None


def write_run(model, tok_path: pathlib.Path, out: pathlib.Path, info: dict) -> None:
    """A run folder holding `model` as step 0 (no optimizer state), like `sos import` writes."""
    import platform

    import numpy as np

    import sos_rs

    from ..train import checkpoint as ckpt

    state = {
        "model_family": model.family,
        "model_config": model.config.to_dict(),
        "train_config": {
            "model": {"family": model.family},
            "data": {"dir": "(fused: give sos train a [data] dir)"},
            "run": {"out": str(out)},
        },
        "optimizer_step": 0,
        "belt": {},
        "rng": {"seed": 0, "note": "fused weights; no training yet"},
        "curriculum": None,
        "val_loss": None,
        "best_val_loss": None,
        "elapsed_s": 0.0,
        "versions": {"sos_rs": sos_rs.__version__, "python": platform.python_version(), "numpy": np.__version__},
        "tokenizer": "tokenizer.json",
        "eot_id": None,
        "fused_from": info,
    }
    from .export import write_atomically

    def write(tmp: pathlib.Path) -> list:
        shutil.copyfile(tok_path, tmp / "tokenizer.json")
        return [ckpt.save(tmp / "checkpoints", 0, model.state_dict(), {}, state)]

    write_atomically(out, False, write)


def heal(args, init: pathlib.Path, out: pathlib.Path, steps: int, only: Optional[set]) -> dict:
    """`steps` of fine-tuning from the run `init` into `out`; with `only`, the other parameters
    are frozen."""
    from ..train.config import from_dict
    from ..train.trainer import Trainer

    cfg = from_dict(
        {
            "model": {"family": "dense", "init": str(init)},
            "data": {"dir": args.data, "seq_len": args.seq_len, "batch_size": args.batch_size},
            "optim": {"lr": args.lr, "min_lr": args.lr / 10},
            "schedule": {"warmup_steps": min(20, steps // 5)},
            "run": {
                "out": str(out),
                "steps": steps,
                "eval_every": 0,
                "sample_tokens": 0,
                "checkpoint_every": steps,
                "threads": args.threads,
                "log_every": max(1, steps // 10),
            },
        }
    )
    trainer = Trainer(cfg, resume="auto", log=lambda m: print(m, file=sys.stderr))
    if only is not None:
        for name, p in trainer.model.named_parameters():
            p.requires_grad = name in only
    return trainer.train()


def run(args) -> int:
    from ..fuse import FuseError, align_embeddings, graft_attention, layer_map, shared_rows
    from ..hf.mapping import HFImportError
    from ..models.dense import DenseLM
    from ..train.checkpoint import CheckpointError
    from ..train.data_setup import DataError
    from ..train.trainer import TrainingError
    from .export import OutputError

    out = pathlib.Path(args.out)
    report: dict = {"host": args.host, "donor": args.donor, "wall_s": {}}
    try:
        if args.heal_steps and not args.data:
            raise FuseError("--heal-steps needs --data (prepared with the host's tokenizer)")
        if args.heal_grafted_first > args.heal_steps:
            raise FuseError("--heal-grafted-first cannot exceed --heal-steps")
        host, htok, htok_path = load_any(args.host)
        donor, dtok, _ = load_any(args.donor)
        for role, m in (("host", host), ("donor", donor)):
            if not isinstance(m, DenseLM):
                raise FuseError(f"the {role} is a {m.family!r} model; fusion grafts between dense models")
        if args.data:
            meta_tok = pathlib.Path(args.data) / "tokenizer.json"
            if not meta_tok.is_file() or meta_tok.read_bytes() != pathlib.Path(htok_path).read_bytes():
                raise FuseError(f"{args.data} was not prepared with the host's tokenizer")
        t0 = time.perf_counter()
        hid, did = shared_rows(htok.get_vocab(with_added_tokens=True), dtok.get_vocab(with_added_tokens=True))
        hid, did = hid[hid < host.config.vocab_size], did[hid < host.config.vocab_size]
        keep = did < donor.config.vocab_size
        hid, did = hid[keep], did[keep]
        al = align_embeddings(host.model.embed_tokens.weight.numpy(), donor.model.embed_tokens.weight.numpy(), hid, did)
        report["wall_s"]["align"] = round(time.perf_counter() - t0, 3)
        report["alignment"] = {
            "shared_tokens": al.shared,
            "residual": round(al.residual, 6),
            "widths": [donor.config.d_model, host.config.d_model],
        }
        t0 = time.perf_counter()
        layers = layer_map(host.config.n_layers, donor.config.n_layers, args.layers)
        fused, gr = graft_attention(host, donor, al.map, layers)
        report["wall_s"]["graft"] = round(time.perf_counter() - t0, 3)
        report["graft"] = {"layers": gr.layers, "norm_scale": round(gr.scale, 6), "notes": gr.notes}
        fused_run = out / "fused" if args.heal_steps else out
        write_run(
            fused, pathlib.Path(htok_path), fused_run, {"host": args.host, "donor": args.donor, **report["graft"]}
        )
        text = held_out_text(args)
        if text is not None:
            t0 = time.perf_counter()
            report["eval"] = {
                "host": score(host, htok, text),
                "donor": score(donor, dtok, text),
                "fused": score(fused, htok, text),
            }
            report["wall_s"]["eval"] = round(time.perf_counter() - t0, 3)
        if args.heal_steps:
            t0 = time.perf_counter()
            init, k = fused_run, args.heal_grafted_first
            if k:
                heal(args, init, out / "heal-grafted", k, set(gr.grafted) | set(gr.boundary))
                init = out / "heal-grafted"
            heal(args, init, out, args.heal_steps - k, None)
            report["wall_s"]["heal"] = round(time.perf_counter() - t0, 3)
            if text is not None:
                from ..train.run_io import load_model

                healed, _, _ = load_model(str(out))
                report["eval"]["healed"] = score(healed, htok, text)
        (out / "fuse_report.json").write_text(json.dumps(report, indent=2))
    except (FuseError, HFImportError, CheckpointError, DataError, TrainingError, OutputError, FileNotFoundError) as e:
        print(f"sos fuse: {e}", file=sys.stderr)
        return 2
    except ValueError as e:
        print(f"sos fuse: {e}", file=sys.stderr)
        return 2
    print(json.dumps(report, indent=2))
    return 0
