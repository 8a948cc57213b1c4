"""Loading a trained model back from a run folder or a checkpoint folder (sample, eval, export)."""

from __future__ import annotations

import pathlib

from ..models import build_model
from . import checkpoint as ckpt


def find_checkpoint(path: str) -> pathlib.Path:
    """`path` is a checkpoint folder, or a run folder whose newest valid checkpoint is taken."""
    p = pathlib.Path(path)
    if (p / "state.json").exists():
        return p
    found = ckpt.latest_valid(p / "checkpoints")
    if found is None:
        raise ckpt.CheckpointError(f"{p} holds no valid checkpoint (looked in {p / 'checkpoints'})")
    return found


def load_model(path: str):
    """(model, state, checkpoint folder) for a run or checkpoint folder."""
    folder = find_checkpoint(path)
    model_arrays, _, state = ckpt.load(folder)
    cfg = dict(state["model_config"])
    model = build_model(state["model_family"], cfg)
    model.load_state_dict(model_arrays)
    return model, state, folder


def tokenizer_for(state: dict, folder: pathlib.Path):
    """The tokenizer recorded by the run: the run folder's copy, else the data folder's."""
    from tokenizers import Tokenizer

    for cand in (folder.parent.parent / "tokenizer.json", pathlib.Path(state.get("tokenizer", ""))):
        if cand.is_file():
            return Tokenizer.from_file(str(cand)), cand
    raise FileNotFoundError(
        f"no tokenizer.json found for {folder} (looked in the run folder and {state.get('tokenizer')})"
    )
