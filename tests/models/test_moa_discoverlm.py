"""Training behaviour of the sparse families and the MoE layer: each family overfits one batch,
1 and 2 threads give identical bits, scalar and SIMD paths agree, the active-parameter fraction
and the capacity rule behave as documented, bad inputs raise typed errors."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
import pytest

import sos_rs
from sos_rs import InvalidValueError, ShapeError, optim
from sos_rs.models import FAMILIES, DiscoverLM, DiscoverLMConfig, MoAConfig, MoALM
from sos_rs.nn.moe import Aux, MoELayer

TINY = {
    "moa": MoAConfig.tiny(capacity_factor=1.25, seed=3).to_dict(),
    "discoverlm": DiscoverLMConfig.tiny(seed=3).to_dict(),
}


def make(family: str, **over):
    model_cls = FAMILIES[family]
    cfg_cls = model_cls.config_class
    return model_cls(cfg_cls.from_dict({**TINY[family], **over}))


def batch(vocab=256, b=4, t=64, seed=0):
    seq = np.random.default_rng(seed).integers(0, vocab, (b, t + 1))
    return seq[:, :-1], seq[:, 1:]


@pytest.mark.parametrize("family", ["moa", "discoverlm"])
def test_overfits_one_batch(family):
    model = make(family)
    opt = optim.AdamW(model.parameters(), lr=1e-2)
    ids, targets = batch()
    ce, rates = [], []
    for _ in range(80):
        opt.zero_grad()
        loss = model.loss(ids, targets)
        loss.backward()
        optim.clip_grad_norm(model.parameters(), 1.0)
        opt.step()
        ce.append(model.last_stats["ce"])
        rates.append(model.last_stats["ti_violation_rate"])
    print(
        f"\n[{family}] CE {ce[0]:.3f} -> {ce[-1]:.3f}; active fraction "
        f"{model.last_stats['active_param_fraction']:.3f}; "
        f"TI violation rate first/last 10 steps {np.mean(rates[:10]):.3f}/{np.mean(rates[-10:]):.3f}"
    )
    assert ce[-1] <= 0.1 * ce[0], (ce[0], ce[-1])


def grads_with_threads(family: str, n: int) -> dict:
    sos_rs.set_num_threads(n)
    try:
        model = make(family)
        ids, targets = batch()
        loss = model.loss(ids, targets)
        loss.backward()
        out = {name: p.grad.numpy() for name, p in model.named_parameters() if p.grad is not None}
        out["loss"] = np.array(loss.item())
        return out
    finally:
        sos_rs.set_num_threads(0)


@pytest.mark.parametrize("family", ["moa", "discoverlm"])
def test_one_and_two_threads_give_identical_bits(family):
    one, two = grads_with_threads(family, 1), grads_with_threads(family, 2)
    assert one.keys() == two.keys() and len(one) > 40
    for name in one:
        assert one[name].tobytes() == two[name].tobytes(), name


SCRIPT = """
import json, sys, numpy as np, sos_rs
from sos_rs.models import FAMILIES
model_cls = FAMILIES[sys.argv[1]]
cfg_cls = model_cls.config_class
model = model_cls(cfg_cls.from_dict(json.loads(sys.argv[2])))
seq = np.random.default_rng(0).integers(0, 256, (2, 33))
loss = model.loss(seq[:, :-1], seq[:, 1:]); loss.backward()
grads = {n: p.grad.numpy() for n, p in model.named_parameters() if p.grad is not None}
np.savez(sys.argv[3], loss=loss.item(), isa=sos_rs.isa(), **grads)
"""


def run_isa(isa: str, family: str, path) -> dict:
    env = dict(os.environ, SOS_ISA=isa)
    subprocess.run([sys.executable, "-c", SCRIPT, family, json.dumps(TINY[family]), str(path)], check=True, env=env)
    with np.load(path) as z:
        return {k: z[k] for k in z.files}


@pytest.mark.parametrize("isa", ["avx2", "avx512"])
@pytest.mark.parametrize("family", ["moa", "discoverlm"])
def test_scalar_and_simd_paths_agree(family, isa, tmp_path):
    order = ["scalar", "avx2", "avx512"]
    if order.index(sos_rs.detected_isa()) < order.index(isa):
        pytest.skip(f"this CPU lacks {isa} (detected {sos_rs.detected_isa()}): that path is not compared here")
    simd, scalar = run_isa(isa, family, tmp_path / "simd.npz"), run_isa("scalar", family, tmp_path / "scalar.npz")
    assert (str(simd["isa"]), str(scalar["isa"])) == (isa, "scalar")
    assert abs(float(simd["loss"]) - float(scalar["loss"])) <= 1e-5
    assert simd.keys() == scalar.keys()
    for name in simd:
        if name not in ("loss", "isa"):
            np.testing.assert_allclose(simd[name], scalar[name], rtol=1e-3, atol=1e-6, err_msg=name)


@pytest.mark.parametrize("family", ["moa", "discoverlm"])
def test_regulariser_triples_depend_only_on_the_batch(family):
    """A resumed run must draw the triples of the uninterrupted one: the loss of a batch is the
    same whether or not the model saw other batches before (nothing about the draw to save)."""
    first, second = batch(seed=1), batch(seed=2)
    fresh = make(family)
    want = fresh.loss(*second).item()
    used = make(family)
    used.loss(*first)
    used.loss(*first)
    assert used.loss(*second).item() == want
    assert used.last_stats["ti_violation_rate"] is not None  # the regulariser ran


def test_active_fraction_is_one_when_every_path_is_chosen_and_less_otherwise():
    ids, _ = batch()
    full = make("moa", router_top_k=4, ffn_top_k=3, capacity_factor=0.0)
    full(ids)
    assert full.last_stats["active_param_fraction"] == pytest.approx(1.0, abs=1e-12)
    sparse = make("moa", router_top_k=1, ffn_top_k=1, capacity_factor=0.0)
    sparse(ids)
    frac = sparse.last_stats["active_param_fraction"]
    assert 0.0 < frac < 0.7 and sparse.last_stats["routed_active_fraction"] < 0.5


def test_eval_mode_uses_the_hard_ball_mask_and_no_regulariser():
    model = make("moa", ball_radius_init=0.05)  # nearly every key outside its ball
    ids, targets = batch()
    train_logits = model(ids).numpy()
    model.eval()
    eval_logits = model(ids).numpy()
    assert np.isfinite(eval_logits).all() and model.last_stats["ti_violation_rate"] is None
    assert np.abs(eval_logits - train_logits).max() > 0
    model.train()
    assert model.loss(ids, targets) is not None and model.last_stats["ti_violation_rate"] is not None


@pytest.mark.parametrize("family", ["moa", "discoverlm"])
def test_keys_inside_the_ball_are_kept_and_outside_pruned(family):
    """A ball that holds every key changes nothing (no penalty, no mask, training or eval); a
    small one prunes in eval mode. Same seed, so the models share every other weight; LayerScale
    1.0 so the attention paths move the logits by far more than the tolerance."""
    ids, _ = batch()
    plain = make(family, ball_pruning=False, layer_scale_init=1.0)
    inside = make(family, ball_pruning=True, ball_radius_init=1e6, layer_scale_init=1.0)
    shared = plain.state_dict()
    assert all(np.array_equal(v, inside.state_dict()[k]) for k, v in shared.items())
    assert set(inside.state_dict()) - set(shared), "the ball adds its origin and radius"
    for mode in ("train", "eval"):
        getattr(plain, mode)()
        getattr(inside, mode)()
        np.testing.assert_allclose(inside(ids).numpy(), plain(ids).numpy(), rtol=1e-5, atol=1e-6, err_msg=mode)
    small = make(family, ball_pruning=True, ball_radius_init=0.05, layer_scale_init=1.0).eval()
    assert np.abs(small(ids).numpy() - plain(ids).numpy()).max() > 1e-2, "keys outside the ball must be pruned"
    # Radius 0.6: some keys inside, some outside. The hard eval mask is binary, so the penalty's
    # slope β cannot matter there; the soft training penalty scales with it.
    soft, steep = (
        make(family, ball_pruning=True, ball_radius_init=0.6, ball_beta=b, layer_scale_init=1.0) for b in (1, 5)
    )
    assert np.abs(soft(ids).numpy() - steep(ids).numpy()).max() > 1e-3, "training: the soft penalty scales with beta"
    soft.eval()
    steep.eval()
    np.testing.assert_allclose(soft(ids).numpy(), steep(ids).numpy(), rtol=1e-5, atol=1e-6, err_msg="eval: hard mask")
    assert np.abs(soft(ids).numpy() - plain(ids).numpy()).max() > 1e-2, "eval: part of the keys pruned"


def test_moe_layer_counts_drops_and_dropped_tokens_pass_as_zero():
    rng = np.random.default_rng(0)
    layer = MoELayer(16, 24, 4, 2, rng, capacity_factor=0.5)
    x = sos_rs.tensor(rng.normal(size=(2, 30, 16)).astype(np.float32), requires_grad=True)
    aux = Aux()
    y = layer(x, aux)
    rec = aux.routes[0]
    # capacity ceil(0.5 · 60 · 2 / 4) = 15 per expert: at most 60 of 120 assignments kept
    assert sum(rec.counts) <= 60 and rec.dropped == 120 - sum(rec.counts) and max(rec.counts) <= 15
    from sos_rs import functional as F

    gates, idx, _, _ = layer.router(sos_rs.tensor(x.numpy().reshape(60, 16)))
    slots = F.moe_plan(idx, 4, 0.5).token_slot()
    lost = np.where((slots == -1).all(1))[0]
    assert len(lost) > 0 and np.all(y.numpy().reshape(60, 16)[lost] == 0.0)
    k_eff = layer.active_fraction(rec)
    assert 0.0 < k_eff < 0.5 + 1e-6  # at most k/E of the experts per token


BAD_INPUTS = [
    ("ids_1d", lambda m: m(np.arange(8)), ShapeError),
    ("too_long", lambda m: m(np.zeros((1, 65), np.int64)), ShapeError),
    ("out_of_vocab", lambda m: m(np.full((1, 4), 256)), InvalidValueError),
    ("negative_id", lambda m: m(np.full((1, 4), -1)), InvalidValueError),
    ("float_ids", lambda m: m(np.zeros((1, 4), np.float32)), sos_rs.DTypeError),
]


@pytest.mark.parametrize("name,call,error", BAD_INPUTS, ids=[b[0] for b in BAD_INPUTS])
def test_bad_inputs_raise_typed_errors(name, call, error):
    with pytest.raises(error):
        call(make("discoverlm"))


BAD_CONFIGS = [
    (MoAConfig, dict(paths=("mha", "conv")), "ordered subset"),
    (MoAConfig, dict(paths=("conv",), router_top_k=2), "router_top_k"),
    (MoAConfig, dict(d_model=64, n_heads=4, head_dim=15), "even"),
    (MoAConfig, dict(ffn_top_k=4), "ffn_top_k"),
    (DiscoverLMConfig, dict(ti_lambda=0.0), "regulariser"),
    (DiscoverLMConfig, dict(paths=("conv", "mix")), "metric attention"),
]


@pytest.mark.parametrize("cls,over,msg", BAD_CONFIGS)
def test_bad_configs_are_refused(cls, over, msg):
    with pytest.raises(ValueError, match=msg):
        cls.tiny(**over)


def test_families_are_registered_and_discovery_preset_is_the_stated_config():
    assert FAMILIES["moa"] is MoALM and FAMILIES["discoverlm"] is DiscoverLM
    c = DiscoverLMConfig()
    assert (
        c.d_model,
        c.n_layers,
        c.n_heads,
        c.ffn_hidden,
        c.router_top_k,
        c.router_temperature,
        c.ffn_rank,
        c.ti_lambda,
        c.ti_triples,
        c.tie_embeddings,
        c.max_seq_len,
    ) == (512, 4, 16, 1536, 2, 2.0, 32, 0.01, 64, True, 1024)
