"""Writes tests/golden/<case>.npz for the sparse families from the PyTorch reference
(python/sos_rs/hf/modeling_sos_moa.py): weights, batch, triples, logits, loss and every gradient
in training mode. tests/test_sparse_vs_torch.py replays them where torch is absent.
Run: python scripts/make_golden_sparse.py (needs torch)."""

from __future__ import annotations

import json
import pathlib
import sys

import numpy as np
import torch

ROOT = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))
sys.path.insert(0, str(ROOT / "python" / "sos_rs" / "hf"))

import modeling_sos_moa as R  # noqa: E402
from golden_cases_sparse import CASES, batch, build  # noqa: E402

HF = {"moa": (R.SosMoAConfig, R.SosMoAForCausalLM), "discoverlm": (R.SosDiscoverLMConfig, R.SosDiscoverLMForCausalLM)}


def run_torch(family: str, cfg: dict, params: dict, ids, targets, triples) -> dict:
    cfg_cls, model_cls = HF[family]
    model = model_cls(cfg_cls(**cfg))
    model.load_state_dict({k: torch.from_numpy(v) for k, v in params.items()}, strict=True)
    model.train()
    logits, loss, _ = model(torch.from_numpy(ids), labels=torch.from_numpy(targets), triples=triples, return_aux=True)
    loss.backward()
    out = {f"param/{k}": v for k, v in params.items()}
    out.update(logits=logits.detach().numpy(), loss=np.float32(loss.item()), ids=ids, targets=targets, triples=triples)
    for name, p in model.named_parameters():
        out[f"grad/{name}"] = (p.grad if p.grad is not None else torch.zeros_like(p)).numpy().copy()
    out["config"], out["family"] = np.array(json.dumps(cfg)), np.array(family)
    return out


def main() -> None:
    torch.set_num_threads(1)
    dest = ROOT / "tests" / "golden"
    dest.mkdir(exist_ok=True)
    for name, (family, cfg) in CASES.items():
        ids, targets, triples = batch(cfg)
        arrays = run_torch(family, cfg, build(name).state_dict(), ids, targets, triples)
        np.savez_compressed(dest / f"{name}.npz", **arrays)
        print(f"wrote {dest / name}.npz: loss {arrays['loss']:.6f}, torch {torch.__version__}")


if __name__ == "__main__":
    main()
