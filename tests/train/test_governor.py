"""The governor's control law (train/governor.py): an induced router collapse (router weights
scaled up) is read as T far above the band and brought back into it by raising the router
temperatures; sustained collapse cuts the learning rate; the state round-trips."""

from __future__ import annotations

import numpy as np

from sos_rs import _core
from sos_rs import governor as g
from sos_rs.models.moa import MoAConfig, MoALM
from sos_rs.train.governor import Governor, GovernorConfig, governor_state_ok


def collapsed_model() -> MoALM:
    m = MoALM(MoAConfig.tiny(vocab_size=256))
    for r in m.routers().values():  # every router's logits x100: one-hot routing
        r.weight.data.copy_(_core.Tensor(np.ascontiguousarray(r.weight.numpy() * 100.0)))
    return m


def test_governor_brings_a_collapsed_router_back_into_the_band():
    m = collapsed_model()
    # The default band: one-hot routing reads T far above it, softened routing inside it.
    cfg = GovernorConfig(every=1, warmup=0, ema=1.0, max_step=0.5, gain=1.0, tau_max=64.0)
    gov = Governor(cfg, m, seed=0)
    ids = np.random.default_rng(0).integers(0, 256, (4, 64))
    first, _ = gov.step(1, ids)
    # every router is clearly collapsed (T above twice the band's edge)
    hot = {k: v for k, v in first["governor"].items() if k.startswith("router.") and v > 2 * cfg.band_high}
    assert len(hot) == len(m.routers()), first["governor"]
    assert hot, f"the induced collapse was not read as T above the band: {first['governor']}"
    actions = []
    for step in range(2, 40):
        rec, events = gov.step(step, ids)
        actions += [e for e in events if e["action"] == "router_temperature"]
    final = {k: rec["governor"][k] for k in hot}
    assert all(cfg.band_low <= t <= cfg.band_high for t in final.values()), final
    taus = {e["router"]: e["tau_to"] for e in actions}
    assert all(taus[k.removeprefix("router.")] > 2.0 for k in hot)  # softened: τ went up
    assert all("T" in e and "T_ema" in e for e in actions)  # each action carries its reading


def test_sustained_collapse_cuts_the_learning_rate_and_state_round_trips():
    m = collapsed_model()
    cfg = GovernorConfig(every=1, warmup=0, ema=1.0, patience=2, tau_max=1.0, tau_min=1.0)  # τ pinned
    gov = Governor(cfg, m, seed=0)
    ids = np.random.default_rng(0).integers(0, 256, (4, 64))
    cuts = []
    for step in range(1, 6):
        cuts += [e for e in gov.step(step, ids)[1] if e["action"] == "lr_cut"]
    assert gov.lr_factor == 0.25 and len(cuts) == 2 and cuts[0]["worst_router_T_ema"] > cfg.band_high
    state = gov.state()
    assert governor_state_ok(state)
    other = Governor(cfg, collapsed_model(), seed=0)
    other.load_state(state)
    assert other.state() == state


def test_router_points_read_random_routing_as_t_near_one_and_collapse_far_above():
    """Dirichlet(1) vectors (uniform on the simplex) map to uniform points: T ≈ 1 on average;
    flat routing (one point) and one-hot routing (the corners) read far above the default band."""
    band = GovernorConfig()
    for e in (2, 3, 8):
        ts = [g.temperature(g.router_points(np.random.default_rng(s).dirichlet(np.ones(e), 512))) for s in range(200)]
        assert 0.8 <= float(np.mean(ts)) <= 1.25, (e, ts)
        flat = np.full((512, e), 1.0 / e)
        onehot = np.eye(e)[np.random.default_rng(0).integers(0, e, 512)]
        assert g.temperature(g.router_points(flat)) > 4 * band.band_high
        assert g.temperature(g.router_points(onehot)) > 4 * band.band_high
        pts = g.router_points(np.random.default_rng(1).dirichlet(np.ones(e), 64))
        assert pts.shape == (64, e - 1) and pts.min() >= 0.0 and pts.max() <= 1.0
