"""`sos export RUN --hf DIR`: a Hugging Face folder (model.safetensors, config.json,
tokenizer.json, tokenizer_config.json); the dense baseline loads as LlamaForCausalLM."""

from __future__ import annotations

import sys


def add_parser(sub) -> None:
    p = sub.add_parser("export", help="export a run to a Hugging Face folder", description=__doc__)
    p.add_argument("run", help="run folder or checkpoint folder")
    p.add_argument("--hf", required=True, metavar="DIR", help="output folder")
    p.set_defaults(func=run)


def run(args) -> int:
    import pathlib

    from ..hf import export_hf
    from ..models import ExportError
    from ..train.checkpoint import CheckpointError
    from ..train.run_io import load_model, tokenizer_for

    try:
        model, state, folder = load_model(args.run)
        tok, tok_path = tokenizer_for(state, folder)
        eot_id = state.get("eot_id")
        eot_token = tok.id_to_token(eot_id) if eot_id is not None else None
        paths = export_hf(model, tok_path, eot_token, eot_id, pathlib.Path(args.hf))
    except (CheckpointError, ExportError, FileNotFoundError, ValueError) as e:
        print(f"sos export: {e}", file=sys.stderr)
        return 2
    for p in paths:
        print(p)
    return 0
