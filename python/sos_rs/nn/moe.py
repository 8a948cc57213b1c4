"""Routing modules: a top-k `Router`, `routed_mixture` (send each token through the k paths its
router chose, computing each path only on its tokens), the homogeneous `MoELayer` (a bank of
SwiGLU experts, one GEMM per expert), and `Aux`, which gathers auxiliary losses and routing
statistics during a forward pass so a model can report them each step."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, List, Optional, Sequence

import numpy as np

from .. import _core
from .. import functional as F
from ..autograd import Tensor
from .module import Module, Parameter

# A path maps (h [B, T, D], h flattened [N, D], the token rows it serves) to outputs [M, D].
Path = Callable[[Tensor, Tensor, np.ndarray], Tensor]


@dataclass
class RouteRecord:
    """One router decision of one forward pass."""

    name: str
    counts: List[int]  # tokens kept per path/expert
    dropped: int  # assignments over capacity
    path_params: List[int]  # parameters of each path/expert
    fractions: List[float]  # share of routing choices per path (before capacity)


@dataclass
class Aux:
    """Auxiliary losses (already weighted) and statistics of one forward pass.
    `triples` [n, 3] are the key triples of the triangle-inequality regulariser (None: off)."""

    triples: Optional[np.ndarray] = None
    training: bool = True
    ti_lambda: float = 0.0  # λ of the triangle-inequality regulariser
    ti_weight: float = 1.0  # 1 / (attention modules), so λ does not grow with depth
    losses: List[Tensor] = field(default_factory=list)
    routes: List[RouteRecord] = field(default_factory=list)
    ti_violations: int = 0
    ti_checks: int = 0
    named: dict = field(default_factory=dict)
    keep_logits: bool = False  # the governor's probe: keep each router's logits in `logits`
    logits: dict = field(default_factory=dict)

    def add(self, name: str, loss: Tensor) -> None:
        self.losses.append(loss)
        self.named[name] = self.named.get(name, 0.0) + loss.item()

    def total(self) -> Optional[Tensor]:
        out = None
        for t in self.losses:
            out = t if out is None else F.add(out, t)
        return out


class Router(Module):
    """logits = x · Wᵀ (W [E, D], no bias) -> softmax(logits / τ) -> top-k renormalised gates."""

    def __init__(self, d_model: int, n_experts: int, k: int, temperature: float, rng: np.random.Generator, std: float):
        super().__init__()
        if not 1 <= k <= n_experts:
            raise ValueError(f"Router: top-k must be in 1..{n_experts}, got {k}")
        self.k, self.temperature, self.n_experts = k, temperature, n_experts
        self.weight = Parameter(rng.normal(0.0, std, (n_experts, d_model)))

    def __call__(self, x: Tensor):
        """x [N, D] -> (gates [N, k] Tensor, ids [N, k] int64, probs [N, E], logits [N, E])"""
        logits = F.linear(x, self.weight)
        probs = F.router_probs(logits, self.temperature)
        gates, idx = F.topk_gates(probs, self.k, renormalize=self.k > 1)
        return gates, idx, probs, logits


def routed_mixture(
    name: str,
    h: Tensor,
    router: Router,
    paths: Sequence[Path],
    path_params: Sequence[int],
    aux: Aux,
    aux_coef: float,
    z_coef: float,
    capacity_factor: float = 0.0,
) -> Tensor:
    """Σ_j gate_j · path_{e_j}(h) per token over its top-k paths. Each path runs only on the rows
    routed to it; a path no token chose is not run. h: [B, T, D] -> [B, T, D]"""
    b, t, d = h.shape
    hf = F.reshape(h, [b * t, d])
    gates, idx, probs, logits = router(hf)
    if aux.keep_logits:
        aux.logits[name] = logits.data.numpy()
    plan = F.moe_plan(idx, len(paths), capacity_factor)
    if aux_coef:
        aux.add(f"{name}.load_balance", F.scale(F.load_balance_loss(probs, idx), aux_coef))
    if z_coef:
        aux.add(f"{name}.z_loss", F.scale(F.router_z_loss(logits), z_coef))
    outs = []
    for e, path in enumerate(paths):
        rows = plan.rows(e)
        outs.append(path(h, hf, rows) if len(rows) else Tensor(_core.Tensor.zeros([0, d])))
    y = F.combine_parts(outs, gates, plan)
    aux.routes.append(
        RouteRecord(name, list(plan.counts), plan.dropped, list(path_params), list(F.expert_fractions(idx, len(paths))))
    )
    return F.reshape(y, [b, t, d])


class MoELayer(Module):
    """Sparse SwiGLU experts: a router picks k of E experts per token; tokens are grouped per
    expert (counting sort), each expert gathers its rows and runs one GEMM per projection over
    them, outputs are scattered back weighted by the gates (`F.moe_swiglu`, one fused op).
    Capacity ceil(capacity_factor·N·k/E) per expert (<= 0: unlimited); assignments over it are
    dropped and the token passes via the residual."""

    def __init__(
        self,
        d_model: int,
        hidden: int,
        n_experts: int,
        k: int,
        rng: np.random.Generator,
        temperature: float = 1.0,
        capacity_factor: float = 1.25,
        std: float = 0.02,
        out_std: Optional[float] = None,
        aux_coef: float = 0.01,
        z_coef: float = 0.0,
    ):
        super().__init__()
        self.capacity_factor, self.aux_coef, self.z_coef = capacity_factor, aux_coef, z_coef
        self.router = Router(d_model, n_experts, k, temperature, rng, std)
        out_std = std if out_std is None else out_std
        self.w_gate = Parameter(rng.normal(0.0, std, (n_experts, hidden, d_model)))
        self.w_up = Parameter(rng.normal(0.0, std, (n_experts, hidden, d_model)))
        self.w_down = Parameter(rng.normal(0.0, out_std, (n_experts, d_model, hidden)))
        self.expert_params = 3 * hidden * d_model

    def __call__(self, x: Tensor, aux: Optional[Aux] = None) -> Tensor:
        """x [..., D] -> [..., D]"""
        shape = list(x.shape)
        xf = F.reshape(x, [int(np.prod(shape[:-1])), shape[-1]])  # [N, D]
        gates, idx, probs, logits = self.router(xf)
        plan = F.moe_plan(idx, self.router.n_experts, self.capacity_factor)
        if aux is not None:
            if self.aux_coef:
                aux.add("moe.load_balance", F.scale(F.load_balance_loss(probs, idx), self.aux_coef))
            if self.z_coef:
                aux.add("moe.z_loss", F.scale(F.router_z_loss(logits), self.z_coef))
            aux.routes.append(
                RouteRecord(
                    "moe",
                    list(plan.counts),
                    plan.dropped,
                    [self.expert_params] * self.router.n_experts,
                    list(F.expert_fractions(idx, self.router.n_experts)),
                )
            )
        return F.reshape(F.moe_swiglu(xf, gates, plan, self.w_gate, self.w_up, self.w_down), shape)

    def active_fraction(self, record: RouteRecord) -> float:
        """Parameters read per token (router + its kept experts) over all of this layer's."""
        n = max(sum(record.counts) + record.dropped, 1) / self.router.k
        total = self.num_parameters()
        router = self.router.weight.data.numel()
        return (router * n + sum(c * p for c, p in zip(record.counts, record.path_params))) / (n * total)
