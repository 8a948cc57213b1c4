"""`sos import --hf DIR --out RUN`: a Hugging Face folder (config.json, model.safetensors or a
sharded index, tokenizer.json) of LlamaForCausalLM, MistralForCausalLM, Qwen2ForCausalLM,
Qwen3ForCausalLM or Gemma3ForCausalLM (text) becomes a dense run folder: train from it with
`[model] init = "RUN"`, or sample, evaluate and export it as is. Anything the dense family cannot
express (an architecture, a RoPE scaling kind, a bias layout) is refused, naming it."""

from __future__ import annotations

import json
import pathlib
import sys


def add_parser(sub) -> None:
    p = sub.add_parser("import", help="import a Hugging Face checkpoint as a run", description=__doc__)
    p.add_argument("--hf", required=True, metavar="DIR", help="Hugging Face folder")
    p.add_argument("--out", required=True, metavar="RUN", help="run folder to write (must be empty or absent)")
    p.add_argument(
        "--max-seq-len",
        type=int,
        metavar="N",
        help="context of the imported model (default: max_position_embeddings)",
    )
    p.set_defaults(func=run)


def run(args) -> int:
    from ..hf.importer import import_hf
    from ..hf.mapping import HFImportError
    from ..train.checkpoint import CheckpointError
    from .export import OutputError

    try:
        summary = import_hf(pathlib.Path(args.hf), pathlib.Path(args.out), args.max_seq_len)
    except (HFImportError, OutputError, CheckpointError) as e:
        print(f"sos import: {e}", file=sys.stderr)
        return 2
    except OSError as e:
        print(f"sos import: {e.filename or args.hf}: {e.strerror or e}", file=sys.stderr)
        return 2
    print(json.dumps(summary))
    return 0
