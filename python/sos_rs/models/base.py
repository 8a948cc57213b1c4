"""The model-family contract. Every family (dense, MoA, DiscoverLM, ...) is one subclass of
`LanguageModel`; the trainer, evaluation, sampling, the memory check and `sos export` use only
what is declared here, never `hasattr` probes or family-name comparisons.

A family provides:

| member | what it is |
|---|---|
| `family` | the name used in TOML (`[model] family = ...`), checkpoints and the registry |
| `config_class` | its config dataclass; every field documented, validated in `__post_init__` |
| `hf_model_type` | `model_type` of its Hugging Face export (`llama` for dense) |
| `forward(ids, cache=None)` | token ids [B, T] -> logits [B, T, V]; with a cache, ids continue it |
| `loss(ids, targets, *, positions, segments)` | the training objective (cross-entropy plus regularisers) |
| `eval_loss(ids, targets, *, positions, segments)` | mean cross-entropy in inference mode, as a float |
| `next_token_loss(ids, targets, positions, segments)` | cross-entropy alone: `loss`'s default, `eval_loss`'s value |
| `forward_docs(ids, positions, segments)` | `forward` keeping packed documents apart (masks optional) |
| `supports_doc_mask` | whether `loss` takes the belt's positions/segments ([B, T], `data.doc_mask`) |
| `new_cache(batch)` | a KV cache for sampling, or None when the family re-reads the context |
| `step_stats()` | numbers describing the last `loss` call, logged to metrics.jsonl |
| `train()` / `eval()` | training or inference mode (regularisers, hard masks) |
| `estimate_memory(batch, seq)` | bytes a training step needs, checked before step 1 |
| `export_hf(out, extra_config)` | weights and config.json of a Hugging Face folder |
| `probe(ids)` | per-layer activations and router logits of a no-grad pass (the governor's points) |
| `routers()` | the family's routers by name (the governor adjusts their temperatures) |
| `grow(n, where)` | `n` more blocks computing the identity (curriculum depth stages), or GrowthError |

Weights are `state_dict()`: parameters, then buffers (non-trainable state such as SAGI's agent
states), so checkpoints, exports and rollback snapshots need no family-specific code.

Adding a family is one module under `models/` defining its config and its `LanguageModel`
subclass, plus one line in `models/registry.py` (CONTRIBUTING.md has the recipe).
"""

from __future__ import annotations

import dataclasses
import pathlib
from typing import Any, Callable, ClassVar, Dict, List, Optional, Type

import numpy as np

from .. import functional as F
from ..autograd import Tensor, no_grad
from ..errors import InvalidValueError, ShapeError
from ..nn import Module

BYTES_F32 = 4
# Peak RSS a training step adds beyond weights, optimizer state and activations, whatever the model
# size: thread-pool stacks and per-thread scratch, allocator slack (measured at 2 threads: 5-10 MiB).
RUNTIME_BYTES = 8 << 20
# The tensor pool keeps freed buffers for reuse up to a quarter over the peak live demand, at most
# 256 MiB (rust/tensor.rs, `recycle::headroom`), so a step's forward and backward size mixes stay
# mapped. Counted as the same quarter of the rest of the estimate (measured at the test sizes on
# 2 threads, the peak then sits at 0.83-1.04 of an estimate with a fifth: tests/models/test_memory_estimate.py).
POOL_HEADROOM_FRACTION = 0.25
POOL_HEADROOM_MAX = 256 << 20


@dataclasses.dataclass(frozen=True)
class MemoryEstimate:
    """Bytes a training step needs: parameters with their gradients and AdamW moments, the
    activations the tape keeps until backward (plus logits and their gradient), the runtime's
    fixed share (thread pools and their scratch, allocator slack: `RUNTIME_BYTES`), and the
    tensor pool's headroom of freed buffers kept for the next step (`pool`). Each family's
    formula is calibrated against the peak RSS growth `tests/support/memory_probe.py` measures,
    to within ±25% (tests/models/test_memory_estimate.py)."""

    weights_and_optimizer: int
    activations: int
    runtime: int = 0

    @property
    def pool(self) -> int:
        rest = self.weights_and_optimizer + self.activations + self.runtime
        return min(int(POOL_HEADROOM_FRACTION * rest), POOL_HEADROOM_MAX)

    @property
    def total(self) -> int:
        return self.weights_and_optimizer + self.activations + self.runtime + self.pool

    def as_dict(self) -> Dict[str, int]:
        return {
            "weights_and_optimizer": self.weights_and_optimizer,
            "activations": self.activations,
            "runtime": self.runtime,
            "pool": self.pool,
            "total": self.total,
        }


class ExportError(ValueError):
    """The model cannot be written in the requested format; the message says why."""


class GrowthError(ValueError):
    """The family cannot add blocks (or not where asked); the message says why."""


@dataclasses.dataclass
class Probe:
    """What `LanguageModel.probe` saw in one no-grad pass over N = B·T tokens:
    `activations` {layer name: [N, D] output of that block}, `router_logits` {router name:
    [N, E] logits before the temperature} (names as in `routers()`)."""

    activations: Dict[str, np.ndarray]
    router_logits: Dict[str, np.ndarray]


class LanguageModel(Module):
    """Base class of every model family: token ids [B, T] -> logits [B, T, vocab]."""

    family: ClassVar[str]
    config_class: ClassVar[Type[Any]]
    config: Any
    model: Any  # the family's body (embedding, `layers`, ...), set by each family
    lm_head: Any  # the untied output projection (a Linear), set by each family when not tied
    hf_model_type: ClassVar[Optional[str]] = None
    """`model_type` in the config.json of this family's Hugging Face export."""
    supports_doc_mask: ClassVar[bool] = False
    """Whether `loss`/`eval_loss` take the belt's positions and segments (documents kept apart:
    RoPE positions restart, attention stays within a document); `data.doc_mask = true` is a
    configuration error for a family without it."""

    def __init__(self, config: Any) -> None:
        super().__init__()
        if not isinstance(config, self.config_class):
            raise TypeError(f"{type(self).__name__} takes a {self.config_class.__name__}, got {type(config).__name__}")
        self.config = config
        self.training = True
        self.last_stats: Dict[str, Any] = {}

    # ---- forward and objectives ---------------------------------------------------------------
    def forward(self, ids: np.ndarray, cache: Optional[list] = None) -> Tensor:
        """ids [B, T] -> logits [B, T, V]. With `cache` (from `new_cache`), ids continue the
        cached sequence (sampling; run under `no_grad`)."""
        raise NotImplementedError

    def __call__(self, ids: np.ndarray, cache: Optional[list] = None) -> Tensor:
        return self.forward(ids, cache)

    def loss(
        self,
        ids: np.ndarray,
        targets: np.ndarray,
        *,
        positions: Optional[np.ndarray] = None,
        segments: Optional[np.ndarray] = None,
    ) -> Tensor:
        """The training objective; the default is the mean next-token cross-entropy. With
        `positions` and `segments` (int [B, T] each, the belt's `last_positions()` and
        `last_segments()` under `data.doc_mask`), documents packed into a row stay apart: RoPE
        positions restart at each document and no query attends across a document boundary.
        Families without `supports_doc_mask` raise InvalidValueError when given them."""
        return self.next_token_loss(ids, targets, positions, segments)

    def eval_loss(
        self,
        ids: np.ndarray,
        targets: np.ndarray,
        *,
        positions: Optional[np.ndarray] = None,
        segments: Optional[np.ndarray] = None,
    ) -> float:
        """Mean cross-entropy in inference mode, without gradients: what validation reports."""
        was = self.training
        self.eval()
        try:
            with no_grad():
                return self.next_token_loss(ids, targets, positions, segments).item()
        finally:
            self.train(was)

    def next_token_loss(
        self, ids: np.ndarray, targets: np.ndarray, positions: Optional[np.ndarray], segments: Optional[np.ndarray]
    ) -> Tensor:
        """The mean next-token cross-entropy alone, without a family's auxiliary terms: `loss`'s
        default and what `eval_loss` reports. Families may compute it another way (the dense
        family fuses the output projection into it)."""
        return F.cross_entropy(self.forward_docs(ids, positions, segments), targets)

    def head(self) -> Tensor:
        """The output projection [V, D]: `lm_head`, or the token embedding when
        `config.tie_embeddings` (every family keeps them as `model.embed_tokens` and `lm_head`)."""
        return self.model.embed_tokens.weight if self.config.tie_embeddings else self.lm_head.weight

    def forward_docs(self, ids: np.ndarray, positions: Optional[np.ndarray], segments: Optional[np.ndarray]) -> Tensor:
        """`forward` with optional document masks (see `loss`); families with
        `supports_doc_mask` override it, the others refuse masks."""
        self.check_doc_masks(np.asarray(ids), positions, segments)
        return self.forward(ids)

    def check_doc_masks(
        self, ids: np.ndarray, positions: Optional[np.ndarray], segments: Optional[np.ndarray]
    ) -> tuple:
        """(positions, segments) as int64 [B, T] arrays matching ids (or None): both or neither,
        and only for families with `supports_doc_mask`. Raises InvalidValueError / ShapeError."""
        if positions is None and segments is None:
            return None, None
        if not self.supports_doc_mask:
            raise InvalidValueError(
                f"the {self.family!r} family does not take document masks (positions/segments); "
                "set data.doc_mask = false"
            )
        if positions is None or segments is None:
            raise InvalidValueError("document masks need both positions and segments (or neither)")
        out = []
        for name, a in (("positions", positions), ("segments", segments)):
            a = np.asarray(a)
            if a.shape != ids.shape:
                raise ShapeError(f"{name} must match the token ids' shape {ids.shape}, got {a.shape}")
            if a.dtype.kind not in "iu":
                raise InvalidValueError(f"{name} must be an integer array, got dtype {a.dtype}")
            out.append(np.ascontiguousarray(a, dtype=np.int64))
        return out[0], out[1]

    def new_cache(self, batch: int) -> Optional[list]:
        """A KV cache for `batch` sequences, or None: the family has none and sampling re-reads
        the whole context for every new token."""
        return None

    def rng_state(self) -> Optional[Dict[str, Any]]:
        """The state of any random generator the family draws from while training (JSON-able),
        saved in checkpoints so a resumed run continues the same draws; None when it has none."""
        return None

    def set_rng_state(self, state: Dict[str, Any]) -> None:
        """Restores what `rng_state` returned; ValueError when `state` does not fit."""
        raise ValueError(f"the {self.family!r} family keeps no random generator state")

    def step_stats(self) -> Dict[str, float]:
        """Numbers about the last `loss` call that the trainer logs (empty for the dense family)."""
        return {}

    # ---- modes ---------------------------------------------------------------------------------
    def train(self, mode: bool = True) -> "LanguageModel":
        """Training mode (the default) or inference mode (`mode=False`)."""
        self.training = mode
        return self

    def eval(self) -> "LanguageModel":
        return self.train(False)

    # ---- sizes and export ----------------------------------------------------------------------
    def estimate_memory(self, batch: int, seq: int) -> MemoryEstimate:
        """Bytes a training step of `batch` × `seq` tokens needs (checked before the first step)."""
        raise NotImplementedError

    def export_hf(self, out: pathlib.Path, extra_config: Optional[dict] = None) -> List[pathlib.Path]:
        """Writes model.safetensors and config.json (plus any modeling code) of a Hugging Face
        folder into `out`; returns the paths written. `extra_config` adds keys to config.json."""
        raise ExportError(f"the {self.family!r} family has no Hugging Face export")

    # ---- the governor and the curriculum ----------------------------------------------------------
    def probe(self, ids: np.ndarray) -> Probe:
        """One inference-mode pass without gradients over ids [B, T], returning each block's
        output and each router's logits (see `Probe`)."""
        raise NotImplementedError(f"the {self.family!r} family has no probe")

    def routers(self) -> Dict[str, Any]:
        """Routers by name, each with a `temperature` attribute (τ of softmax(logits / τ)); empty
        for families that route nothing."""
        return {}

    def grow(self, n: int, where: str = "top") -> None:
        """Adds `n` blocks that compute the identity, so the network's function is unchanged and
        the new blocks get gradient on the next step: at the top of the stack (`where="top"`) or
        one after every block from the bottom (`"interleave"`). Updates `config.n_layers`.
        Families that cannot grow raise GrowthError (the default)."""
        raise GrowthError(f"the {self.family!r} family cannot grow (grow_layers is not supported for it)")

    @staticmethod
    def growth_slots(n_layers: int, n: int, where: str) -> List[int]:
        """Indices (in the grown stack) the `n` new blocks take: the top, or one after each of
        the first n existing blocks ("interleave"; the rest of them at the top when n > n_layers)."""
        if n <= 0:
            raise GrowthError(f"grow_layers must be positive, got {n}")
        if where == "top":
            return list(range(n_layers, n_layers + n))
        if where == "interleave":
            inner = min(n, n_layers)
            return [2 * i + 1 for i in range(inner)] + list(range(n_layers + inner, n_layers + n))
        raise GrowthError(f"grow_where = {where!r}: expected top | interleave")

    def _grow_layers(self, n: int, where: str, make_block: Callable[[np.random.Generator], Module]) -> None:
        """Shared body of `grow` for families whose blocks sit in `self.model.layers`: builds `n`
        blocks with `make_block` (already set to the identity), from a generator seeded by
        (seed, current depth) so a resumed run grows identical blocks, and inserts them."""
        from ..nn import ModuleList

        old = list(self.model.layers)
        slots = self.growth_slots(len(old), n, where)
        rng = np.random.default_rng([self.config.seed, len(old), 0x6120])
        new = [make_block(rng) for _ in range(n)]
        stack: List[Module] = []
        fresh = iter(new)
        rest = iter(old)
        for i in range(len(old) + n):
            stack.append(next(fresh) if i in slots else next(rest))
        self.model.layers = ModuleList(stack)
        self.config = dataclasses.replace(self.config, n_layers=len(stack))

    # ---- helpers for subclasses -----------------------------------------------------------------
    def check_ids(self, ids: np.ndarray, seen: int = 0) -> np.ndarray:
        """ids as a 2-D array that fits the context after `seen` cached positions."""
        ids = np.asarray(ids)
        if ids.ndim != 2:
            raise ShapeError(f"{type(self).__name__} expects token ids [B, T], got shape {ids.shape}")
        if seen + ids.shape[1] > self.config.max_seq_len:
            raise ShapeError(f"sequence length {seen + ids.shape[1]} exceeds max_seq_len={self.config.max_seq_len}")
        return ids


def zero_(p: Tensor) -> None:
    """Sets a parameter to zeros in place (identity-initialised residual branches)."""
    from .. import _core

    p.data.copy_(_core.Tensor.zeros(list(p.shape)))


def parameter_state_bytes(n_params: int) -> int:
    """Weights, gradients and the two AdamW moments, in f32."""
    return n_params * 4 * BYTES_F32


__all__ = [
    "ExportError",
    "GrowthError",
    "LanguageModel",
    "MemoryEstimate",
    "Probe",
    "RUNTIME_BYTES",
    "parameter_state_bytes",
    "zero_",
]
