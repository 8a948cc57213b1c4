"""The `sos` command. Each subcommand lives in its own module of this package and exposes
`add_parser(subparsers)`, which registers its arguments and sets `func` to its entry point."""

from __future__ import annotations

import argparse
import importlib
import sys
from typing import Optional, Sequence

# Subcommands, in the order `sos --help` lists them; each is the module of that name, except
# where MODULES names another (`import` is a Python keyword).
SUBCOMMANDS = [
    "init",
    "prepare",
    "synth",
    "import",
    "train",
    "sample",
    "eval",
    "export",
    "fuse",
    "plot",
    "info",
    "precision",
    "bench",
    "audit",
]
MODULES = {"import": "import_hf"}


def build_parser() -> argparse.ArgumentParser:
    from .. import __version__

    parser = argparse.ArgumentParser(prog="sos", description="sos_rs: train small language models on CPUs.")
    parser.add_argument("--version", action="version", version=f"sos {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in SUBCOMMANDS:
        importlib.import_module(f"{__name__}.{MODULES.get(name, name)}").add_parser(sub)
    return parser


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    try:
        return int(args.func(args) or 0)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
