"""Training behaviour of the dense baseline: it overfits one batch, and thread counts and
instruction-set paths agree."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
import pytest

import sos_rs
from sos_rs import DenseConfig, DenseLM, optim

TINY = dict(vocab_size=256, d_model=64, n_layers=2, n_heads=4, n_kv_heads=2, max_seq_len=64, seed=3)


def batch(vocab=256, b=4, t=64, seed=0):
    seq = np.random.default_rng(seed).integers(0, vocab, (b, t + 1))
    return seq[:, :-1], seq[:, 1:]


def test_overfits_one_batch():
    model = DenseLM(DenseConfig(**TINY))
    opt = optim.AdamW(model.parameters(), lr=1e-2)
    ids, targets = batch()
    losses = []
    for _ in range(100):
        opt.zero_grad()
        loss = model.loss(ids, targets)
        loss.backward()
        optim.clip_grad_norm(model.parameters(), 1.0)
        opt.step()
        losses.append(loss.item())
    assert losses[-1] <= 0.1 * losses[0], (losses[0], losses[-1])


def grads_with_threads(n: int) -> dict:
    sos_rs.set_num_threads(n)
    try:
        model = DenseLM(DenseConfig(**TINY))
        ids, targets = batch()
        loss = model.loss(ids, targets)
        loss.backward()
        out = {name: p.grad.numpy() for name, p in model.named_parameters()}
        out["loss"] = np.array(loss.item())
        return out
    finally:
        sos_rs.set_num_threads(0)


def test_one_and_two_threads_give_identical_bits():
    one, two = grads_with_threads(1), grads_with_threads(2)
    for name in one:
        assert one[name].tobytes() == two[name].tobytes(), name


SCRIPT = """
import json, sys, numpy as np, sos_rs
from sos_rs import DenseConfig, DenseLM
model = DenseLM(DenseConfig(**json.loads(sys.argv[1])))
seq = np.random.default_rng(0).integers(0, 256, (2, 33))
loss = model.loss(seq[:, :-1], seq[:, 1:]); loss.backward()
np.savez(sys.argv[2], loss=loss.item(), isa=sos_rs.isa(), **{n: p.grad.numpy() for n, p in model.named_parameters()})
"""


def run_isa(isa: str, path) -> dict:
    env = dict(os.environ, SOS_ISA=isa)
    subprocess.run([sys.executable, "-c", SCRIPT, json.dumps(TINY), str(path)], check=True, env=env)
    with np.load(path) as z:
        return {k: z[k] for k in z.files}


@pytest.mark.parametrize("isa", ["avx2", "avx512"])
def test_scalar_and_simd_paths_agree(isa, tmp_path):
    if ["scalar", "avx2", "avx512"].index(sos_rs.detected_isa()) < ["scalar", "avx2", "avx512"].index(isa):
        pytest.skip(f"this CPU lacks {isa} (detected {sos_rs.detected_isa()})")
    simd = run_isa(isa, tmp_path / "simd.npz")
    scalar = run_isa("scalar", tmp_path / "scalar.npz")
    assert (str(simd["isa"]), str(scalar["isa"])) == (isa, "scalar")
    assert abs(float(simd["loss"]) - float(scalar["loss"])) <= 1e-5
    for name in simd:
        if name not in ("loss", "isa"):
            np.testing.assert_allclose(simd[name], scalar[name], rtol=1e-3, atol=1e-6, err_msg=name)


def test_kv_cache_decoding_matches_full_forward():
    from sos_rs import no_grad

    model = DenseLM(DenseConfig(**{**TINY, "max_seq_len": 20}))
    ids = np.random.default_rng(1).integers(0, 256, (2, 12))
    with no_grad():
        full = model(ids).numpy()
        cache = model.new_cache(2)
        parts = [model(ids[:, :5], cache).numpy()] + [model(ids[:, t : t + 1], cache).numpy() for t in range(5, 12)]
    np.testing.assert_allclose(np.concatenate(parts, 1), full, rtol=1e-5, atol=1e-5)
