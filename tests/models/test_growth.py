"""Depth growth (`LanguageModel.grow`): the grown network computes the same function, the new
blocks get gradient on the next step, and families that cannot grow say so."""

from __future__ import annotations

import numpy as np
import pytest

from sos_rs import functional as F
from sos_rs.models import build_model
from sos_rs.models.base import GrowthError
from sos_rs.models.dense import DenseConfig
from sos_rs.models.discoverlm import DiscoverLMConfig
from sos_rs.models.moa import MoAConfig

CASES = {
    "dense": dict(DenseConfig(vocab_size=256, d_model=32, n_layers=2, n_heads=4, max_seq_len=64).__dict__),
    "moa": dict(MoAConfig.tiny().__dict__),
    "discoverlm": dict(DiscoverLMConfig.tiny().__dict__),
}


def trained(family: str):
    """A model whose weights moved off their init (so growth is tested on a real function)."""
    from sos_rs import optim

    m = build_model(family, dict(CASES[family]))
    opt = optim.AdamW(m.parameters(), lr=1e-2)
    rng = np.random.default_rng(0)
    for _ in range(3):
        ids = rng.integers(0, 256, (2, 16))
        m.loss(ids, np.roll(ids, -1, 1)).backward()
        opt.step()
        opt.zero_grad()
    return m


@pytest.mark.parametrize("family", list(CASES))
@pytest.mark.parametrize("where", ["top", "interleave"])
def test_growth_keeps_the_logits(family, where):
    m = trained(family)
    ids = np.random.default_rng(1).integers(0, 256, (2, 16))
    m.eval()
    before = m(ids).numpy()
    n0 = m.config.n_layers
    m.grow(2, where)
    assert m.config.n_layers == n0 + 2 and len(list(m.model.layers)) == n0 + 2
    after = m(ids).numpy()
    assert np.abs(after - before).max() <= 1e-6


@pytest.mark.parametrize("family", list(CASES))
def test_new_blocks_get_gradient_on_the_next_step(family):
    m = trained(family)
    old = {id(p) for p in m.parameters()}
    m.grow(1, "top")
    m.train()
    ids = np.random.default_rng(2).integers(0, 256, (2, 16))
    F.cross_entropy(m(ids), np.roll(ids, -1, 1)).backward()
    new = [(n, p) for n, p in m.named_parameters() if id(p) not in old]
    assert new and all(n.startswith(f"model.layers.{m.config.n_layers - 1}.") for n, _ in new)
    moving = [n for n, p in new if p.grad is not None and np.abs(p.grad.numpy()).max() > 0]
    # the zero-initialised residual outputs (o_proj/down_proj, or the LayerScales) learn first
    assert moving, "no new parameter received gradient"


def test_interleaved_slots():
    from sos_rs.models.base import LanguageModel

    assert LanguageModel.growth_slots(3, 2, "interleave") == [1, 3]
    assert LanguageModel.growth_slots(2, 3, "interleave") == [1, 3, 4]
    assert LanguageModel.growth_slots(2, 2, "top") == [2, 3]
    with pytest.raises(GrowthError, match="grow_where"):
        LanguageModel.growth_slots(2, 1, "middle")


def test_sagi_cannot_grow():
    from sos_rs.models.sagi import SAGIConfig

    m = build_model("sagi", dict(SAGIConfig(vocab_size=256, d_model=32, n_layers=1, n_heads=4, max_agents=6).__dict__))
    with pytest.raises(GrowthError, match="'sagi' family cannot grow"):
        m.grow(1)
