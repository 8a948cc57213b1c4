"""Training behaviour of the SAGI family: it overfits one batch, 1 and 2 threads give identical
bits (in subprocesses, SOS_NUM_THREADS), the budget's cost model gives the documented caps, the
agent-state EMA moves only in training passes and travels in state_dict, KV-cache decoding
matches the full forward, bad configs name the problem."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
import pytest

from sos_rs import optim
from sos_rs.autograd import no_grad
from sos_rs.models import SAGILM, SAGIConfig, build_model
from sos_rs.nn.swarm import budget_caps


def batch(vocab=256, b=4, t=64, seed=0):
    seq = np.random.default_rng(seed).integers(0, vocab, (b, t + 1))
    return seq[:, :-1], seq[:, 1:]


def test_overfits_one_batch():
    model = SAGILM(SAGIConfig.tiny(seed=3))
    opt = optim.AdamW(model.parameters(), lr=1e-2)
    ids, targets = batch()
    ce = []
    for _ in range(60):
        opt.zero_grad()
        model.loss(ids, targets).backward()
        optim.clip_grad_norm(model.parameters(), 1.0)
        opt.step()
        ce.append(model.last_stats["ce"])
    s = model.step_stats()
    print(
        f"\n[sagi] CE {ce[0]:.3f} -> {ce[-1]:.3f}; active fraction {s['active_param_fraction']:.3f}; "
        f"agents/token {s['agents_per_token']:.2f}; rounds {s['thought_rounds']:.2f}; "
        f"entropy {s['routing_entropy']:.3f}"
    )
    assert ce[-1] <= 0.1 * ce[0], (ce[0], ce[-1])
    assert len(s["agent_load"]) == model.config.max_agents and abs(sum(s["agent_load"]) - 1) < 1e-3


THREAD_SCRIPT = """
import json, sys, numpy as np
from sos_rs import optim
from sos_rs.models import SAGIConfig, SAGILM
model = SAGILM(SAGIConfig.tiny(seed=4))
opt = optim.AdamW(model.parameters(), lr=1e-2)
seq = np.random.default_rng(0).integers(0, 256, (4, 65))
for _ in range(3):
    opt.zero_grad()
    model.loss(seq[:, :-1], seq[:, 1:]).backward()
    opt.step()
state = model.state_dict()
json.dump({k: v.tobytes().hex() for k, v in state.items()}, sys.stdout)
"""


def test_one_and_two_threads_give_identical_bits():
    outs = []
    for n in (1, 2):
        env = dict(os.environ, SOS_NUM_THREADS=str(n))
        run = subprocess.run([sys.executable, "-c", THREAD_SCRIPT], env=env, capture_output=True, text=True)
        assert run.returncode == 0, run.stderr
        outs.append(json.loads(run.stdout))
    assert outs[0].keys() == outs[1].keys() and any(k.endswith("agent_state") for k in outs[0])
    for name in outs[0]:
        assert outs[0][name] == outs[1][name], name


@pytest.mark.parametrize(
    "budget,per_agent,per_thought,top_k,agents,thought_max,want",
    [
        (60.0, 2.0, 2.5, 5, 20, 5, (5, 5)),  # the published preset: the budget does not bind
        (14.0, 2.0, 2.5, 4, 8, 3, (4, 2)),  # tiny: 8 for agents, the other 6 buy 2 rounds
        (7.0, 2.0, 2.5, 5, 20, 5, (3, 0)),  # 3 agents cost 6; 1 left buys no round
        (7.0, 2.0, 0.0, 1, 20, 4, (1, 4)),  # free thoughts: only K_thought_max caps them
    ],
)
def test_budget_caps(budget, per_agent, per_thought, top_k, agents, thought_max, want):
    assert budget_caps(budget, per_agent, per_thought, top_k, agents, thought_max) == want


def test_agent_states_move_only_in_training_and_travel_in_state_dict():
    model = SAGILM(SAGIConfig.tiny(seed=5))
    ids, targets = batch()
    before = {n: b.numpy().copy() for n, b in model.named_buffers()}
    model.eval()
    model.eval_loss(ids, targets)
    model(ids)
    assert all((b.numpy() == before[n]).all() for n, b in model.named_buffers())
    model.train()
    model.loss(ids, targets)
    moved = {n: float(np.abs(b.numpy() - before[n]).max()) for n, b in model.named_buffers()}
    assert all(v > 0 for v in moved.values()), moved
    other = SAGILM(SAGIConfig.tiny(seed=5))
    other.load_state_dict(model.state_dict())
    for n, b in other.named_buffers():
        assert b.numpy().tobytes() == dict(model.named_buffers())[n].numpy().tobytes()
    assert other.num_parameters() == model.num_parameters()  # buffers are not parameters


def test_kv_cache_decoding_matches_full_forward():
    model = SAGILM(SAGIConfig.tiny(seed=6)).eval()
    ids, _ = batch(b=2, t=12)
    with no_grad():
        full = model(ids).numpy()
        cache = model.new_cache(2)
        parts = [model(ids[:, :5], cache).numpy()] + [model(ids[:, t : t + 1], cache).numpy() for t in range(5, 12)]
    np.testing.assert_allclose(np.concatenate(parts, 1), full, atol=2e-5, rtol=0)


def test_preset_is_the_published_config():
    c = SAGIConfig()
    assert (c.d_model, c.n_layers, c.n_heads, c.ffn_hidden, c.max_agents, c.route_top_k) == (512, 6, 8, 2048, 20, 5)
    assert (c.dim_s, c.dim_msg, c.attn_dim, c.budget_compute, c.k_thought_max) == (64, 16, 64, 60.0, 5)
    assert (c.compute_per_agent, c.compute_per_thought, c.max_seq_len) == (2.0, 2.5, 2048)


@pytest.mark.parametrize(
    "over,needle",
    [
        ({"route_top_k": 30}, "exceeds max_agents"),
        ({"route_min_gate": 0.5}, "route_min_gate"),
        ({"budget_compute": 1.0}, "cannot pay for one agent"),
        ({"d_model": 60, "n_heads": 4}, "RoPE"),
        ({"state_ema": 2.0}, "state_ema"),
        ({"dim_msg": 0}, "dim_msg must be positive"),
    ],
)
def test_bad_configs_name_the_problem(over, needle):
    with pytest.raises(ValueError, match=needle):
        build_model("sagi", {**SAGIConfig.tiny().to_dict(), **over})
