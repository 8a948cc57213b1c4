"""Training configuration: TOML sections [model], [data], [optim], [schedule], [run].
Every field is documented here; unknown keys and missing required keys are named in the error.
Overrides from the command line use dotted keys (`--set optim.lr=1e-3`)."""

from __future__ import annotations

import dataclasses
import json
import sys
from dataclasses import dataclass, field
from typing import Any, Optional

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

REQUIRED = object()


class ConfigError(ValueError):
    """A configuration file or override is invalid; the message names the key."""


@dataclass
class DataConfig:
    dir: str = REQUIRED  # type: ignore[assignment]
    """Folder written by `sos prepare` (tokenizer.json, shards, meta.json)."""
    mixture: list = field(default_factory=list)
    """Optional extra sources: [{dir = "...", weight = 0.3}, ...]; `dir` above gets weight
    1 - sum(weights). All sources must share the tokenizer."""
    seq_len: int = 128
    """Tokens per training row (T); rows are packed from documents with no padding."""
    batch_size: int = 16
    """Rows per micro-batch (B)."""


@dataclass
class OptimConfig:
    lr: float = 3e-3
    """Peak learning rate."""
    min_lr: float = 3e-4
    """Learning rate at the end of the decay."""
    betas: list = field(default_factory=lambda: [0.9, 0.95])
    """AdamW (beta1, beta2)."""
    eps: float = 1e-8
    """AdamW epsilon."""
    weight_decay: float = 0.1
    """Decoupled weight decay on matrices; norms, embeddings and 1-D parameters are excluded."""
    grad_clip: float = 1.0
    """Clip the global gradient norm to this value (0 disables)."""
    grad_accum: int = 1
    """Micro-batches per optimizer step."""


@dataclass
class ScheduleConfig:
    kind: str = "cosine"
    """cosine | linear | wsd (warmup-stable-decay) | constant — after a linear warmup."""
    warmup_steps: int = 50
    """Steps of linear warmup from 0 to lr."""
    decay_fraction: float = 0.2
    """wsd only: the final fraction of steps that decays linearly to min_lr."""


@dataclass
class RunConfig:
    out: str = REQUIRED  # type: ignore[assignment]
    """Run folder: metrics.jsonl, checkpoints/, samples, plot."""
    steps: int = 1000
    """Optimizer steps to train for."""
    max_minutes: float = 0.0
    """Stop (with a checkpoint) after this many minutes of training; 0 = no limit."""
    seed: int = 0
    """Seed of initialisation, data order and samples."""
    threads: int = 0
    """Compute threads (0 = SOS_NUM_THREADS or all CPUs)."""
    log_every: int = 10
    """Steps between metric lines."""
    eval_every: int = 200
    """Steps between validation passes (and at the end); 0 disables."""
    eval_batches: int = 20
    """Validation batches per pass (0 = the whole validation split)."""
    sample_every: int = 0
    """Steps between samples written to samples.txt (0 = only at the end)."""
    sample_tokens: int = 100
    """Tokens per sample."""
    sample_prompt: str = ""
    """Prompt of the training-time samples ("" = start from end-of-text)."""
    checkpoint_every: int = 200
    """Steps between checkpoints (a final one is always written)."""
    keep_last: int = 3
    """Checkpoints kept besides the best one."""
    price_per_hour: float = 0.0
    """Price of the machine per wall-clock hour, in your currency (0 = not priced). With it the
    metrics, checkpoints and summary carry `cost` = price_per_hour × wall-clock hours of training
    (CPU-seconds `cpu_s` are recorded either way); `sos audit` reports both."""


SECTIONS = {"data": DataConfig, "optim": OptimConfig, "schedule": ScheduleConfig, "run": RunConfig}


@dataclass
class TrainConfig:
    model: dict
    data: DataConfig
    optim: OptimConfig
    schedule: ScheduleConfig
    run: RunConfig

    def to_dict(self) -> dict:
        return {"model": dict(self.model), **{k: dataclasses.asdict(getattr(self, k)) for k in SECTIONS}}


def _parse_value(text: str) -> Any:
    try:
        return tomllib.loads(f"v = {text}")["v"]
    except tomllib.TOMLDecodeError:
        return text  # a bare string


def apply_overrides(raw: dict, overrides: list) -> dict:
    for item in overrides or []:
        if "=" not in item:
            raise ConfigError(f"override {item!r} is not of the form section.key=value")
        key, value = item.split("=", 1)
        parts = key.strip().split(".")
        if len(parts) != 2:
            raise ConfigError(f"override key {key!r} must be section.key (e.g. optim.lr)")
        raw.setdefault(parts[0], {})[parts[1]] = _parse_value(value.strip())
    return raw


def from_dict(raw: dict) -> TrainConfig:
    unknown_sections = sorted(set(raw) - set(SECTIONS) - {"model"})
    if unknown_sections:
        raise ConfigError(f"unknown sections: {', '.join(unknown_sections)} (expected model, {', '.join(SECTIONS)})")
    model = dict(raw.get("model", {}))
    model.setdefault("family", "dense")
    from ..models import config_fields

    try:
        allowed = config_fields(model["family"]) | {"family"}
    except ValueError as e:
        raise ConfigError(f"[model] family: {e}") from None
    unknown = sorted(set(model) - allowed)
    if unknown:
        raise ConfigError(f"[model] unknown keys for family {model['family']!r}: {', '.join(unknown)}")
    built = {}
    for name, cls in SECTIONS.items():
        section = dict(raw.get(name, {}))
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(section) - names)
        if unknown:
            raise ConfigError(f"[{name}] unknown keys: {', '.join(unknown)} (known: {', '.join(sorted(names))})")
        missing = sorted(f.name for f in dataclasses.fields(cls) if f.default is REQUIRED and f.name not in section)
        if missing:
            raise ConfigError(f"[{name}] missing required keys: {', '.join(missing)}")
        built[name] = cls(**section)
    cfg = TrainConfig(model=model, **built)
    _validate(cfg)
    return cfg


def _validate(cfg: TrainConfig) -> None:
    checks = [
        (cfg.data.seq_len > 0, "data.seq_len must be positive"),
        (cfg.data.batch_size > 0, "data.batch_size must be positive"),
        (cfg.optim.grad_accum >= 1, "optim.grad_accum must be >= 1"),
        (cfg.optim.lr > 0, "optim.lr must be positive"),
        (cfg.run.steps > 0, "run.steps must be positive"),
        (
            cfg.schedule.kind in ("cosine", "linear", "wsd", "constant"),
            f"schedule.kind {cfg.schedule.kind!r} is not cosine|linear|wsd|constant",
        ),
        (len(cfg.optim.betas) == 2, "optim.betas must be [beta1, beta2]"),
        (cfg.run.price_per_hour >= 0, "run.price_per_hour must not be negative"),
    ]
    for ok, msg in checks:
        if not ok:
            raise ConfigError(msg)


def load(path: str, overrides: Optional[list] = None) -> TrainConfig:
    try:
        with open(path, "rb") as f:
            raw = tomllib.load(f)
    except FileNotFoundError:
        raise ConfigError(f"config file {path} does not exist") from None
    except tomllib.TOMLDecodeError as e:
        raise ConfigError(f"{path}: invalid TOML: {e}") from None
    return from_dict(apply_overrides(raw, overrides or []))


def dumps(cfg: TrainConfig) -> str:
    return json.dumps(cfg.to_dict(), indent=2)
