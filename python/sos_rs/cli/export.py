"""`sos export RUN --hf DIR`: a Hugging Face folder (model.safetensors, config.json,
tokenizer.json, tokenizer_config.json); the dense baseline loads as LlamaForCausalLM.

DIR must not exist or be empty (`--force` replaces what it holds). The folder is written under a
temporary name beside DIR and renamed into place, so DIR never holds a half-written export."""

from __future__ import annotations

import os
import pathlib
import shutil
import sys


def add_parser(sub) -> None:
    p = sub.add_parser("export", help="export a run to a Hugging Face folder", description=__doc__)
    p.add_argument("run", help="run folder or checkpoint folder")
    p.add_argument("--hf", required=True, metavar="DIR", help="output folder (must be empty or absent)")
    p.add_argument("--force", action="store_true", help="replace the contents of a non-empty output folder")
    p.set_defaults(func=run)


class OutputError(ValueError):
    """The output folder cannot be written as asked."""


def write_atomically(out: pathlib.Path, force: bool, write) -> list:
    """Runs `write(tmp)` on a fresh temporary folder beside `out`, then renames it to `out`
    (replacing an existing `out` only if it is empty or `force`). On any failure the temporary
    folder is removed and `out` is untouched. Returns write's paths, moved under `out`."""
    if os.path.lexists(out):
        if not out.is_dir() or out.is_symlink():
            if not force:
                raise OutputError(f"{out} exists and is not a folder; use --force to replace it")
        elif any(out.iterdir()) and not force:
            raise OutputError(f"{out} is not empty; use --force to replace its contents, or choose another folder")
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.parent / f".{out.name}.tmp-{os.getpid()}"
    old = out.parent / f".{out.name}.old-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    try:
        paths = write(tmp)
        if os.path.lexists(out):
            os.rename(out, old)
        os.rename(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        if os.path.lexists(old) and not os.path.lexists(out):
            os.rename(old, out)
        raise
    if old.is_dir() and not old.is_symlink():
        shutil.rmtree(old, ignore_errors=True)
    elif os.path.lexists(old):
        old.unlink()
    return [out / pathlib.Path(p).relative_to(tmp) for p in paths]


def run(args) -> int:
    from ..hf import export_hf
    from ..models import ExportError
    from ..train.checkpoint import CheckpointError
    from ..train.run_io import load_model, tokenizer_for

    try:
        model, state, folder = load_model(args.run)
        tok, tok_path = tokenizer_for(state, folder)
        eot_id = state.get("eot_id")
        eot_token = tok.id_to_token(eot_id) if eot_id is not None else None
        paths = write_atomically(
            pathlib.Path(args.hf), args.force, lambda tmp: export_hf(model, tok_path, eot_token, eot_id, tmp)
        )
    except (CheckpointError, ExportError, FileNotFoundError, ValueError) as e:
        print(f"sos export: {e}", file=sys.stderr)
        return 2
    except OSError as e:
        print(f"sos export: cannot write {args.hf}: {e.strerror or e}", file=sys.stderr)
        return 2
    for p in paths:
        print(p)
    return 0
