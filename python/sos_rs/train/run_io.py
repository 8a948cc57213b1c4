"""Loading a trained model back from a run folder or a checkpoint folder (sample, eval, export)."""

from __future__ import annotations

import json
import os
import pathlib
from typing import Any, Callable, List, Optional

from ..models import build_model
from . import checkpoint as ckpt


def load_model(path: str, log: Optional[Callable[[str], None]] = None):
    """(model, state, checkpoint folder) for a checkpoint folder, or for a run folder's newest
    checkpoint that loads (damaged ones are reported through `log` and skipped). Raises only
    CheckpointError."""
    p = pathlib.Path(path)

    def use(folder: pathlib.Path, model_arrays: dict, _optimizer: dict, state: dict):
        try:
            model = build_model(state["model_family"], dict(state["model_config"]))
        except (TypeError, ValueError, ArithmeticError) as e:
            raise ckpt.CheckpointError(f"{folder}: cannot build the recorded model: {e}") from None
        expected = {n: tuple(t.shape) for n, t in model.named_parameters()}
        ckpt.check_arrays(folder, "model.safetensors", model_arrays, expected)
        model.load_state_dict(model_arrays)
        routers = model.routers()
        for name, tau in ((state.get("governor") or {}).get("tau") or {}).items():
            if name in routers:  # the governor's router temperatures are part of the trained model
                routers[name].temperature = float(tau)
        return model, state, folder

    if os.path.lexists(p / "state.json"):
        return use(p, *ckpt.load(p, log))
    found = ckpt.load_latest(p / "checkpoints", use, log)
    if found is None:
        raise ckpt.CheckpointError(f"{p} holds no valid checkpoint (looked in {p / 'checkpoints'})")
    return found


def run_folder(checkpoint: pathlib.Path) -> pathlib.Path:
    """The run folder of a checkpoint folder (RUN/checkpoints/step-N -> RUN)."""
    return checkpoint.parent.parent


def portable_paths(run: pathlib.Path, data_dir: str, mixture: list) -> dict:
    """The data folders as a run records them in state.json: each relative to the run folder and
    absolute, so the run can be moved on its own (the absolute path still holds) or together with
    its data (the relative one does), and evaluated from any working directory."""

    def both(d: str) -> List[str]:
        target = pathlib.Path(d).resolve()
        return [os.path.relpath(target, run.resolve()), str(target)]

    return {"data": both(data_dir), "mixture": [both(m["dir"]) for m in mixture]}


def resolve_data_dirs(train_config: dict, state: dict, folder: pathlib.Path) -> dict:
    """`train_config` with data.dir and the mixture folders pointing at folders that exist: the
    path relative to the run folder first, then the absolute one, then the path as written (from
    the working directory, what runs before recorded data_dirs used)."""
    recorded = state.get("data_dirs") or {}
    run = run_folder(folder)

    def pick(written: str, pair: Any) -> str:
        cands = []
        if isinstance(pair, list) and len(pair) == 2 and all(isinstance(x, str) for x in pair):
            cands += [run / pair[0], pathlib.Path(pair[1])]
        cands.append(pathlib.Path(written))
        for c in cands:
            if (c / "meta.json").is_file():
                return str(c)
        return written

    out = json.loads(json.dumps(train_config))
    data = out.get("data", {})
    if isinstance(data.get("dir"), str):
        data["dir"] = pick(data["dir"], recorded.get("data"))
    mixture = recorded.get("mixture")
    pairs: list = mixture if isinstance(mixture, list) else []
    for i, m in enumerate(data.get("mixture") or []):
        if isinstance(m, dict) and isinstance(m.get("dir"), str):
            m["dir"] = pick(m["dir"], pairs[i] if i < len(pairs) else None)
    return out


def tokenizer_for(state: dict, folder: pathlib.Path):
    """The run's tokenizer: state's `tokenizer` (relative to the run folder, as runs record it
    now, or an absolute path from older runs), else the run folder's tokenizer.json."""
    from tokenizers import Tokenizer

    recorded = pathlib.Path(state.get("tokenizer", "") or "tokenizer.json")
    cands = [run_folder(folder) / recorded] if not recorded.is_absolute() else [recorded]
    cands.append(run_folder(folder) / "tokenizer.json")
    for cand in cands:
        if cand.is_file():
            try:
                return Tokenizer.from_file(str(cand)), cand
            except Exception as e:  # the tokenizers library raises its own exception type
                raise ckpt.CheckpointError(f"{cand}: not a readable tokenizer ({e})") from None
    raise FileNotFoundError(f"no tokenizer found for {folder} (looked for {', '.join(str(c) for c in cands)})")
