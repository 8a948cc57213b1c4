"""DIR/meta.json: what `sos prepare` wrote and how to read it back. Paths are stored relative to
DIR (so a prepared directory can be moved) and returned absolute by `read_meta`."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, Dict, Union

META_NAME = "meta.json"
FORMAT = "sos_rs.prepared"
META_VERSION = 1

PathLike = Union[str, "os.PathLike[str]"]


def write_meta(directory: PathLike, meta: Dict[str, Any]) -> Path:
    path = Path(directory) / META_NAME
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps({"format": FORMAT, "version": META_VERSION, **meta}, indent=2) + "\n")
    tmp.replace(path)
    return path


def _absolute(directory: Path, value: Any) -> Any:
    """Shard lists (and dicts of them) with every name resolved against `directory`."""
    if isinstance(value, list):
        return [str(directory / v) for v in value]
    if isinstance(value, dict):
        return {k: _absolute(directory, v) for k, v in value.items()}
    return value


def read_meta(directory: PathLike) -> Dict[str, Any]:
    """The prepared directory's meta.json as a dict, with `tokenizer`, `shards` and each
    source's `shards` as absolute paths. Keys: vocab_size, eot_id, eot_token, tokenizer, dtype,
    shards {"train": [...], "val": [...]}, counts {"train"/"val": {documents, tokens, bytes}}
    (also under the name `splits`), sources {label: {shards, counts, stages}}, stages, seconds,
    skipped_files, options, versions. Tokens include one end-of-text per document and bytes
    are UTF-8 bytes of the cleaned text, so bits per byte = loss_nats / ln 2 * tokens / bytes."""
    directory = Path(directory).resolve()
    path = directory / META_NAME
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no meta.json (run `sos prepare INPUTS... --out {directory}` first)")
    meta = json.loads(path.read_text())
    if meta.get("format") != FORMAT or meta.get("version") != META_VERSION:
        raise ValueError(
            f"{path}: format {meta.get('format')!r} version {meta.get('version')!r}, "
            f"expected {FORMAT!r} version {META_VERSION}"
        )
    meta["directory"] = str(directory)
    meta["tokenizer"] = str(directory / meta["tokenizer"])
    meta["shards"] = _absolute(directory, meta["shards"])
    for source in meta.get("sources", {}).values():
        source["shards"] = _absolute(directory, source["shards"])
    meta["splits"] = meta["counts"]
    return meta
