"""The thermodynamic governor in training (SPEC §8): every `governor.every` steps it probes the
model on a few rows of the current batch, reads a temperature T = D²/E[D²] per layer from the
block outputs (projected, standardised, through the normal CDF) and per router from its
probability vectors (sos_rs/governor.py), keeps an EMA of each, and acts:

- router temperatures: a router whose T-EMA leaves [band_low, band_high] gets a damped
  log-space step of its τ, Δlog τ = ±gain·(distance to the band in log T), at most max_step,
  in the direction that brings T toward the band — found by re-reading T on the same logits at
  τ·e^{±max_step} (T is U-shaped in τ: flat and one-hot routing are both clustered) — and
  clamped to [tau_min, tau_max] × the configured τ;
- learning rate: after `patience` consecutive collapsed readings (a router T-EMA above
  band_high while its τ sits at a clamp, or a layer's activation T-EMA above act_high) the LR
  factor is multiplied by
  lr_cut (down to lr_floor);
- freeze signal: the mean activation T-EMA moved by less than freeze_tol (relative) over the
  last freeze_window readings: the state has settled, which a curriculum stage with
  `advance = "governor"` takes as its cue.

Each action is a metrics.jsonl event (`event = "governor"`) with the reading that caused it; the
readings are a `governor` record. The state (EMAs, τ, counters, LR factor) is in the checkpoint,
so a resumed run makes the same decisions."""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from typing import Any, Dict, List, Optional, Tuple

import numpy as np

from .. import governor as g


@dataclass
class GovernorConfig:
    enabled: Optional[bool] = None
    """Run the governor; unset = on for families with routers (MoA, DiscoverLM), off otherwise."""
    every: int = 25
    """Steps between readings."""
    tokens: int = 256
    """Tokens probed per reading: whole rows of the current batch, at least one row."""
    band_low: float = 0.5
    """Lower edge of the router T band. Router T is read on the simplex-uniformised
    probabilities (`governor.router_points`): ≈ 1 for routing as varied as random, ≈ 1.5–2.5
    for softmax of unit-variance logits, ≫ 1 for flat (one point) or one-hot (corners) routing."""
    band_high: float = 8.0
    """Upper edge of the router T band; above it a router counts as collapsed (flat or one-hot)."""
    act_high: float = 50.0
    """A layer whose activation T-EMA exceeds this counts as collapsed (LR cut)."""
    gain: float = 0.5
    """Damping: Δlog τ = gain × (log-distance of T from the band), clipped to max_step."""
    max_step: float = 0.2
    """Largest change of log τ per reading (also the probe offset of the direction test)."""
    tau_min: float = 0.25
    """Lowest router τ, as a factor of the configured τ."""
    tau_max: float = 4.0
    """Highest router τ, as a factor of the configured τ."""
    ema: float = 0.5
    """Weight of the newest reading in each T-EMA."""
    warmup: int = 50
    """Steps before the governor acts (it reads and logs from the first reading)."""
    patience: int = 4
    """Consecutive collapsed readings before the learning rate is cut."""
    lr_cut: float = 0.5
    """Factor applied to the learning-rate factor at each cut."""
    lr_floor: float = 0.125
    """The learning-rate factor never goes below this."""
    freeze_window: int = 4
    """Readings the freeze test looks back over."""
    freeze_tol: float = 0.05
    """Freeze when (max − min)/mean of the mean activation T-EMA over the window is below this."""


LIMITS: Dict[str, Tuple[Any, str]] = {
    "every": (lambda v: v >= 1, "a positive integer"),
    "tokens": (lambda v: v >= 1, "a positive integer"),
    "band_low": (lambda v: v > 0, "a positive number"),
    "band_high": (lambda v: v > 0, "a positive number above band_low"),
    "act_high": (lambda v: v > 0, "a positive number"),
    "gain": (lambda v: 0 < v <= 1, "a number in (0, 1]"),
    "max_step": (lambda v: v > 0, "a positive number"),
    "tau_min": (lambda v: 0 < v <= 1, "a number in (0, 1]"),
    "tau_max": (lambda v: v >= 1, "a number >= 1"),
    "ema": (lambda v: 0 < v <= 1, "a number in (0, 1]"),
    "warmup": (lambda v: v >= 0, "an integer >= 0"),
    "patience": (lambda v: v >= 1, "a positive integer"),
    "lr_cut": (lambda v: 0 < v <= 1, "a number in (0, 1]"),
    "lr_floor": (lambda v: 0 < v <= 1, "a number in (0, 1]"),
    "freeze_window": (lambda v: v >= 2, "an integer >= 2"),
    "freeze_tol": (lambda v: v >= 0, "a number >= 0"),
}


def validate(cfg: GovernorConfig) -> List[Tuple[bool, str]]:
    """(ok, message) checks for config.py's validation, naming the key."""
    out = [
        (bool(check(getattr(cfg, k))), f"governor.{k} = {getattr(cfg, k)!r}: expected {what}")
        for k, (check, what) in LIMITS.items()
    ]
    out.append(
        (cfg.band_low < cfg.band_high, f"governor.band_low = {cfg.band_low} must be below band_high = {cfg.band_high}")
    )
    return out


def _softmax(logits: np.ndarray, tau: float) -> np.ndarray:
    z = logits.astype(np.float64) / tau
    z -= z.max(axis=1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=1, keepdims=True)


def router_temperature(logits: np.ndarray, tau: float) -> float:
    """T of a router's probability vectors softmax(logits / τ) [N, E], mapped to the cube by
    `governor.router_points` (uniform routing over the simplex reads T ≈ 1)."""
    return g.temperature(g.router_points(_softmax(logits, tau)))


class Governor:
    def __init__(self, cfg: GovernorConfig, model, seed: int):
        self.cfg, self.model, self.seed = cfg, model, seed
        self.base_tau = {name: float(r.temperature) for name, r in model.routers().items()}
        self.ema: Dict[str, float] = {}
        self.last: Dict[str, float] = {}
        self.collapsed_run = 0
        self.lr_factor = 1.0
        self.freeze_trace: List[float] = []
        self.frozen = False
        self.readings = 0
        self.seconds = 0.0
        self._proj: Dict[int, np.ndarray] = {}

    def rebind(self, model) -> None:
        """After growth: the new routers start at their configured τ."""
        self.model = model
        for name, r in model.routers().items():
            self.base_tau.setdefault(name, float(r.temperature))

    def _projection(self, width: int) -> np.ndarray:
        if width not in self._proj:
            self._proj[width] = g.projection(width, self.seed)
        return self._proj[width]

    def due(self, step: int) -> bool:
        return step % self.cfg.every == 0

    # ---- one reading -------------------------------------------------------------------------------
    def measure(self, ids: np.ndarray) -> Dict[str, float]:
        """T of every layer's activations (`act.<layer>`) and every router (`router.<name>`) on
        the first rows of `ids` holding at least `tokens` tokens."""
        rows = max(1, min(ids.shape[0], math.ceil(self.cfg.tokens / ids.shape[1])))
        probe = self.model.probe(np.ascontiguousarray(ids[:rows]))
        out = {}
        for name, x in probe.activations.items():
            out[f"act.{name}"] = g.temperature(g.activation_points(x, self._projection(x.shape[1])))
        routers = self.model.routers()
        for name, logits in probe.router_logits.items():
            out[f"router.{name}"] = router_temperature(logits, float(routers[name].temperature))
        return out

    def step(self, step: int, ids: np.ndarray) -> Tuple[dict, List[dict]]:
        """Reads, updates the EMAs and acts. Returns (the reading record, the action events)."""
        t0 = time.perf_counter()
        c = self.cfg
        reading = self.measure(ids)
        self.readings += 1
        for k, v in reading.items():
            self.ema[k] = v if k not in self.ema else (1 - c.ema) * self.ema[k] + c.ema * v
        self.last = reading
        events: List[dict] = []
        acting = step >= c.warmup
        routers = self.model.routers()
        probe_logits: Optional[Dict[str, np.ndarray]] = None
        for name, r in routers.items():
            key = f"router.{name}"
            if not acting or key not in self.ema:
                continue
            t_ema = self.ema[key]
            dist = self._distance(t_ema)
            if dist == 0.0:
                continue
            if probe_logits is None:
                rows = max(1, min(ids.shape[0], math.ceil(c.tokens / ids.shape[1])))
                probe_logits = self.model.probe(np.ascontiguousarray(ids[:rows])).router_logits
            tau = float(r.temperature)
            up = self._distance(router_temperature(probe_logits[name], tau * math.exp(c.max_step)))
            down = self._distance(router_temperature(probe_logits[name], tau * math.exp(-c.max_step)))
            sign = 1.0 if up < down else -1.0
            new = tau * math.exp(sign * min(c.gain * dist, c.max_step))
            lo, hi = self.base_tau[name] * c.tau_min, self.base_tau[name] * c.tau_max
            new = min(max(new, lo), hi)
            if new != tau:
                r.temperature = new
                events.append(
                    {
                        "event": "governor",
                        "step": step,
                        "action": "router_temperature",
                        "router": name,
                        "T": reading[key],
                        "T_ema": t_ema,
                        "tau_from": tau,
                        "tau_to": new,
                    }
                )

        # LR cut after sustained collapse: a layer's activations, or a router above the band whose
        # τ is already at a clamp (its own knob is spent).
        def pinned(name: str) -> bool:
            tau, base = float(routers[name].temperature), self.base_tau[name]
            return tau <= base * c.tau_min * (1 + 1e-9) or tau >= base * c.tau_max * (1 - 1e-9)

        worst_router = max(
            (v for k, v in self.ema.items() if k.startswith("router.") and k[7:] in routers and pinned(k[7:])),
            default=0.0,
        )
        worst_act = max((v for k, v in self.ema.items() if k.startswith("act.")), default=0.0)
        collapsed = worst_router > c.band_high or worst_act > c.act_high
        self.collapsed_run = self.collapsed_run + 1 if collapsed and acting else 0
        if self.collapsed_run >= c.patience and self.lr_factor > c.lr_floor:
            old = self.lr_factor
            self.lr_factor = max(c.lr_floor, self.lr_factor * c.lr_cut)
            self.collapsed_run = 0
            events.append(
                {
                    "event": "governor",
                    "step": step,
                    "action": "lr_cut",
                    "worst_router_T_ema": worst_router,
                    "worst_act_T_ema": worst_act,
                    "lr_factor_from": old,
                    "lr_factor_to": self.lr_factor,
                }
            )
        # Freeze signal.
        acts = [v for k, v in self.ema.items() if k.startswith("act.")]
        if acts:
            self.freeze_trace = (self.freeze_trace + [float(np.mean(acts))])[-c.freeze_window :]
        was = self.frozen
        if len(self.freeze_trace) >= c.freeze_window:
            tr = self.freeze_trace
            self.frozen = bool((max(tr) - min(tr)) / max(float(np.mean(tr)), 1e-12) < c.freeze_tol)
        if self.frozen and not was:
            events.append(
                {"event": "governor", "step": step, "action": "freeze", "act_T_ema_trace": list(self.freeze_trace)}
            )
        self.seconds += time.perf_counter() - t0
        record = {
            "step": step,
            "governor": {k: round(v, 5) for k, v in reading.items()},
            "governor_tau": {n: r.temperature for n, r in routers.items()},
            "governor_lr_factor": self.lr_factor,
        }
        return record, events

    def _distance(self, t: float) -> float:
        """Log-distance of T from [band_low, band_high] (0 inside)."""
        c = self.cfg
        if t > c.band_high:
            return math.log(t / c.band_high)
        if t < c.band_low:
            return math.log(c.band_low / max(t, 1e-300))
        return 0.0

    # ---- checkpoint state -------------------------------------------------------------------------------
    def state(self) -> dict:
        return {
            "ema": dict(self.ema),
            "last": dict(self.last),
            "tau": {n: float(r.temperature) for n, r in self.model.routers().items()},
            "base_tau": dict(self.base_tau),
            "collapsed_run": self.collapsed_run,
            "lr_factor": self.lr_factor,
            "freeze_trace": list(self.freeze_trace),
            "frozen": self.frozen,
            "readings": self.readings,
        }

    def load_state(self, state: dict) -> None:
        routers = self.model.routers()
        unknown = sorted(set(state["tau"]) - set(routers))
        if unknown:
            raise ValueError(f"governor state names routers this model lacks: {unknown[:3]}")
        for n, t in state["tau"].items():
            routers[n].temperature = float(t)
        self.ema = {k: float(v) for k, v in state["ema"].items()}
        self.last = {k: float(v) for k, v in state["last"].items()}
        self.base_tau.update({k: float(v) for k, v in state["base_tau"].items()})
        self.collapsed_run = int(state["collapsed_run"])
        self.lr_factor = float(state["lr_factor"])
        self.freeze_trace = [float(v) for v in state["freeze_trace"]]
        self.frozen = bool(state["frozen"])
        self.readings = int(state["readings"])


STATE_KEYS = {"ema", "last", "tau", "base_tau", "collapsed_run", "lr_factor", "freeze_trace", "frozen", "readings"}


def governor_state_ok(v: Any) -> bool:
    """Schema check of state.json's `governor` (null or the table `Governor.state` writes)."""
    if v is None:
        return True
    if not isinstance(v, dict) or set(v) != STATE_KEYS:
        return False
    num = (int, float)
    return (
        all(
            isinstance(v[k], dict) and all(isinstance(x, num) for x in v[k].values())
            for k in ("ema", "last", "tau", "base_tau")
        )
        and isinstance(v["collapsed_run"], int)
        and isinstance(v["lr_factor"], num)
        and 0 < v["lr_factor"] <= 1
        and isinstance(v["freeze_trace"], list)
        and isinstance(v["frozen"], bool)
        and isinstance(v["readings"], int)
    )
