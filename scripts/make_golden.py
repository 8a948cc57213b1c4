"""Writes tests/golden/<case>.npz for every case of tests/support/golden_cases.py (or the ones
named) from the PyTorch references; the model comparisons replay them where torch is absent.

Dense cases come from the PyTorch twin (tests/support/torch_reference.py): weights, batch,
logits, loss, every gradient, and the losses of 10 AdamW steps. Sparse cases (MoA, DiscoverLM)
come from the PyTorch reference sos_rs.hf.modeling_sos_moa: weights, batch, triples, logits, loss
and every gradient in training mode. SAGI cases come from sos_rs.hf.modeling_sos_sagi: weights and
agent states, batch, logits, loss, every gradient, and the agent states after the training pass.

    python -m scripts.make_golden                  # every case (needs torch)
    python -m scripts.make_golden moa_tiny         # just the cases named
"""

from __future__ import annotations

import argparse
import json
import pathlib

import numpy as np

from tests.support.golden_cases import (
    DENSE_CASES,
    DOC_MASK_CASES,
    OPTIM,
    SAGI_CASES,
    SPARSE_CASES,
    STEPS,
    build_sagi,
    build_sparse,
    dense_batch,
    doc_mask_batch,
    sagi_batch,
    sparse_batch,
)

ROOT = pathlib.Path(__file__).resolve().parents[1]


def run_dense(cfg: dict, ids: np.ndarray, targets: np.ndarray) -> dict:
    import torch

    from tests.support.torch_reference import TorchDense

    torch.manual_seed(0)
    model = TorchDense(cfg)
    out = {f"param/{n}": model.get(n).detach().numpy().copy() for n in model.names}
    logits = model(torch.from_numpy(ids))
    loss = torch.nn.functional.cross_entropy(
        logits.reshape(-1, cfg["vocab_size"]), torch.from_numpy(targets).reshape(-1)
    )
    loss.backward()
    out["logits"] = logits.detach().numpy()
    out["loss"] = np.float32(loss.item())
    for n in model.names:
        out[f"grad/{n}"] = model.get(n).grad.numpy().copy()
    opt = model.adamw(OPTIM["lr"], OPTIM["betas"], OPTIM["eps"], OPTIM["weight_decay"])
    losses = []
    for _ in range(STEPS):
        opt.zero_grad()
        loss = torch.nn.functional.cross_entropy(
            model(torch.from_numpy(ids)).reshape(-1, cfg["vocab_size"]), torch.from_numpy(targets).reshape(-1)
        )
        loss.backward()
        torch.nn.utils.clip_grad_norm_(list(model.parameters()), OPTIM["clip"])
        opt.step()
        losses.append(loss.item())
    out["step_losses"] = np.array(losses, dtype=np.float64)
    out["ids"], out["targets"] = ids, targets
    out["config"] = np.array(json.dumps(cfg))
    return out


def run_doc_mask(cfg: dict, ids, targets, positions, segments) -> dict:
    """A dense case on packed documents: logits, loss and every gradient of the PyTorch twin with
    RoPE positions restarting per document and a boolean block-diagonal causal mask."""
    import torch

    from tests.support.torch_reference import TorchDense

    torch.manual_seed(0)
    model = TorchDense(cfg)
    out = {f"param/{n}": model.get(n).detach().numpy().copy() for n in model.names}
    logits = model(torch.from_numpy(ids), torch.from_numpy(positions), torch.from_numpy(segments))
    loss = torch.nn.functional.cross_entropy(
        logits.reshape(-1, cfg["vocab_size"]), torch.from_numpy(targets).reshape(-1)
    )
    loss.backward()
    out["logits"], out["loss"] = logits.detach().numpy(), np.float32(loss.item())
    for n in model.names:
        out[f"grad/{n}"] = model.get(n).grad.numpy().copy()
    out.update(ids=ids, targets=targets, positions=positions, segments=segments, config=np.array(json.dumps(cfg)))
    return out


def run_sparse(family: str, cfg: dict, params: dict, ids, targets, triples) -> dict:
    import torch

    from sos_rs.hf import modeling_sos_moa as R

    hf = {
        "moa": (R.SosMoAConfig, R.SosMoAForCausalLM),
        "discoverlm": (R.SosDiscoverLMConfig, R.SosDiscoverLMForCausalLM),
    }
    cfg_cls, model_cls = hf[family]
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


def run_sagi(cfg: dict, state: dict, ids: np.ndarray, targets: np.ndarray) -> dict:
    import torch

    from sos_rs.hf import modeling_sos_sagi as R

    model = R.SosSAGIForCausalLM(R.SosSAGIConfig(**cfg))
    model.load_state_dict({k: torch.from_numpy(v.copy()) for k, v in state.items()}, strict=True)
    model.train()
    logits, loss, aux = model(torch.from_numpy(ids), labels=torch.from_numpy(targets), return_aux=True)
    loss.backward()
    out = {f"param/{k}": v for k, v in state.items()}
    out.update(logits=logits.detach().numpy(), loss=np.float32(loss.item()), ids=ids, targets=targets)
    out["agents"] = np.array([s["agents"] for s in aux["stats"]])
    out["rounds"] = np.array([s["rounds"] for s in aux["stats"]])
    for name, p in model.named_parameters():
        out[f"grad/{name}"] = (p.grad if p.grad is not None else torch.zeros_like(p)).numpy().copy()
    for name, b in model.named_buffers():
        out[f"state_after/{name}"] = b.numpy().copy()
    out["config"], out["family"] = np.array(json.dumps(cfg)), np.array("sagi")
    return out


def run_case(name: str) -> dict:
    """The golden arrays of one case, computed with torch."""
    if name in DENSE_CASES:
        cfg = DENSE_CASES[name]
        return run_dense(cfg, *dense_batch(cfg))
    if name in DOC_MASK_CASES:
        cfg, lens = DOC_MASK_CASES[name]
        return run_doc_mask(cfg, *doc_mask_batch(cfg, lens))
    if name in SAGI_CASES:
        cfg = SAGI_CASES[name]
        return run_sagi(cfg, build_sagi(name).state_dict(), *sagi_batch(cfg))
    family, cfg = SPARSE_CASES[name]
    return run_sparse(family, cfg, build_sparse(name).state_dict(), *sparse_batch(cfg))


def main() -> None:
    names = [*DENSE_CASES, *DOC_MASK_CASES, *SPARSE_CASES, *SAGI_CASES]
    ap = argparse.ArgumentParser(
        description=__doc__.splitlines()[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("cases", nargs="*", metavar="CASE", help=f"cases to write (default: all of {', '.join(names)})")
    args = ap.parse_args()
    unknown = [c for c in args.cases if c not in names]
    if unknown:
        ap.error(f"unknown case {', '.join(unknown)} (cases: {', '.join(names)})")
    try:
        import torch
    except ImportError:
        raise SystemExit("make_golden needs torch (pip install -e .[torch])") from None
    torch.set_num_threads(1)
    dest = ROOT / "tests" / "golden"
    dest.mkdir(exist_ok=True)
    for name in args.cases or names:
        arrays = run_case(name)
        np.savez_compressed(dest / f"{name}.npz", **arrays)
        print(f"wrote {dest / name}.npz: loss {arrays['loss']:.6f}, torch {torch.__version__}")


if __name__ == "__main__":
    main()
