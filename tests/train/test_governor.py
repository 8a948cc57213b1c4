"""The governor's control law (train/governor.py): an induced router collapse (router weights
scaled up) is read as T far above the band and brought back into it by raising the router
temperatures; sustained collapse cuts the learning rate; the state round-trips."""

from __future__ import annotations

import numpy as np

from sos_rs import _core
from sos_rs.models.moa import MoAConfig, MoALM
from sos_rs.train.governor import Governor, GovernorConfig, governor_state_ok


def collapsed_model() -> MoALM:
    m = MoALM(MoAConfig.tiny(vocab_size=256))
    for r in m.routers().values():  # every router's logits x100: one-hot routing
        r.weight.data.copy_(_core.Tensor(np.ascontiguousarray(r.weight.numpy() * 100.0)))
    return m


def test_governor_brings_a_collapsed_router_back_into_the_band():
    m = collapsed_model()
    # The band's upper edge sits between the collapsed reading (T ≈ 18-53 for 4 corners of [0,1]^E)
    # and what softened routing reads; see ARCHITECTURE.md on why router T is far above 1.
    cfg = GovernorConfig(every=1, warmup=0, ema=1.0, band_high=15.0, max_step=0.5, gain=1.0, tau_max=64.0)
    gov = Governor(cfg, m, seed=0)
    ids = np.random.default_rng(0).integers(0, 256, (4, 64))
    first, _ = gov.step(1, ids)
    # the clearly collapsed routers (T above twice the band's edge; the 3-branch HyperFFN ones here)
    hot = {k: v for k, v in first["governor"].items() if k.startswith("router.") and v > 2 * cfg.band_high}
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
    cfg = GovernorConfig(every=1, warmup=0, ema=1.0, band_high=12.0, patience=2, tau_max=1.0, tau_min=1.0)  # τ pinned
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
