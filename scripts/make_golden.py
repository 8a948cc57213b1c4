"""Writes tests/golden/<case>.npz from the PyTorch twin (tests/torch_reference.py): weights,
batch, logits, loss, every gradient, and the losses of 10 AdamW steps. The dense-model test
replays these where torch is absent. Run: python scripts/make_golden.py (needs torch)."""

from __future__ import annotations

import json
import pathlib
import sys

import numpy as np
import torch

ROOT = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))

from golden_cases import CASES, OPTIM, STEPS, batch  # noqa: E402
from torch_reference import TorchDense  # noqa: E402


def run_torch(cfg: dict, ids: np.ndarray, targets: np.ndarray) -> dict:
    torch.manual_seed(0)
    model = TorchDense(cfg)
    out = {f"param/{n}": model.get(n).detach().numpy().copy() for n in model.names}
    logits = model(torch.from_numpy(ids))
    loss = torch.nn.functional.cross_entropy(logits.reshape(-1, cfg["vocab_size"]), torch.from_numpy(targets).reshape(-1))
    loss.backward()
    out["logits"] = logits.detach().numpy()
    out["loss"] = np.float32(loss.item())
    for n in model.names:
        out[f"grad/{n}"] = model.get(n).grad.numpy().copy()
    opt = model.adamw(OPTIM["lr"], OPTIM["betas"], OPTIM["eps"], OPTIM["weight_decay"])
    losses = []
    for _ in range(STEPS):
        opt.zero_grad()
        loss = torch.nn.functional.cross_entropy(model(torch.from_numpy(ids)).reshape(-1, cfg["vocab_size"]), torch.from_numpy(targets).reshape(-1))
        loss.backward()
        torch.nn.utils.clip_grad_norm_(list(model.parameters()), OPTIM["clip"])
        opt.step()
        losses.append(loss.item())
    out["step_losses"] = np.array(losses, dtype=np.float64)
    out["ids"], out["targets"] = ids, targets
    out["config"] = np.array(json.dumps(cfg))
    return out


def main() -> None:
    torch.set_num_threads(1)
    dest = ROOT / "tests" / "golden"
    dest.mkdir(exist_ok=True)
    for name, cfg in CASES.items():
        ids, targets = batch(cfg)
        arrays = run_torch(cfg, ids, targets)
        np.savez_compressed(dest / f"{name}.npz", **arrays)
        print(f"wrote {dest / name}.npz: loss {arrays['loss']:.6f}, torch {torch.__version__}")


if __name__ == "__main__":
    main()
