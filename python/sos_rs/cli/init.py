"""`sos init [DIR]`: copies the example configs shipped inside the package (sos_rs/configs/*.toml,
the repository's configs/) into DIR (default: ./configs), so an installed wheel has them too.
Existing files are kept unless --force."""

from __future__ import annotations

import shutil
import sys
from pathlib import Path
from typing import List


def config_dir() -> Path:
    """Where the example configs live inside the installed package."""
    return Path(__file__).resolve().parent.parent / "configs"


def example_configs() -> List[Path]:
    return sorted(config_dir().glob("*.toml"))


def add_parser(sub) -> None:
    p = sub.add_parser(
        "init",
        help="copy the example configs (demo.toml, ...) into a folder",
        description=f"Copies the example configs shipped with sos_rs (from {config_dir()}) into DIR.",
    )
    p.add_argument("dir", nargs="?", default="configs", metavar="DIR", help="destination folder (default ./configs)")
    p.add_argument("--force", action="store_true", help="overwrite files that already exist")
    p.set_defaults(func=run)


def run(args) -> int:
    sources = example_configs()
    if not sources:
        print(f"sos init: error: no example configs found in {config_dir()}", file=sys.stderr)
        return 1
    out = Path(args.dir)
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        print(f"sos init: error: cannot create {out}: {e.strerror or e}", file=sys.stderr)
        return 1
    if out.resolve() == config_dir():
        print(f"{out} already holds the example configs")
        return 0
    kept = []
    for src in sources:
        dst = out / src.name
        if dst.exists() and not args.force:
            kept.append(dst.name)
            continue
        shutil.copyfile(src, dst)
        print(f"wrote {dst}")
    if kept:
        print(f"kept existing {', '.join(kept)} (--force overwrites)")
    first = next((src.name for src in sources if src.name == "demo.toml"), sources[0].name)
    print(f"next: sos prepare ... --out runs/data/NAME, then sos train {out / first} --set data.dir=...")
    return 0
