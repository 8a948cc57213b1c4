"""Training configuration: TOML sections [model], [data], [optim], [schedule], [run], [rollback],
[governor], [curriculum]. Every field is documented here ([rollback] in train/rollback.py,
[governor] in train/governor.py, [curriculum] in train/curriculum.py, beside the code each configures);
unknown keys and missing required keys are named in the error.
Overrides from the command line use dotted keys (`--set optim.lr=1e-3`).

Every value, from the file or an override, is coerced to its field's annotation (`.001` and
`"1e-3"` become floats, `"12"` an int) and checked against the field's range (`LIMITS` here;
the family's config class for `[model]`); a value that does not fit raises ConfigError naming
the key, the value and what was expected."""

from __future__ import annotations

import dataclasses
import json
import math
import sys
import typing
from dataclasses import dataclass, field
from typing import Any, Callable, Dict, List, Optional, Tuple

from .curriculum import CurriculumConfig, CurriculumError, max_seq_len
from .curriculum import parse as parse_curriculum
from .governor import GovernorConfig
from .governor import validate as validate_governor
from .rollback import RollbackConfig
from .rollback import validate as validate_rollback

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
    mixture: List[dict] = field(default_factory=list)
    """Optional extra sources: [{dir = "...", weight = 0.3}, ...]; `dir` above gets weight
    1 - sum(weights). All sources must share the tokenizer."""
    seq_len: int = 128
    """Tokens per training row (T); rows are packed from documents with no padding."""
    batch_size: int = 16
    """Rows per micro-batch (B)."""
    doc_mask: bool = False
    """Keep the documents packed into a row apart: RoPE positions restart at each document and
    attention never crosses a document boundary (the belt's positions and segments; fully masked
    tiles are skipped, so a step costs no more). Training and validation alike; dense family only,
    not with a [curriculum]."""


@dataclass
class OptimConfig:
    lr: float = 3e-3
    """Peak learning rate."""
    min_lr: float = 3e-4
    """Learning rate at the end of the decay."""
    betas: List[float] = field(default_factory=lambda: [0.9, 0.95])
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
    """wsd only: the final fraction of steps (or of the time budget) that decays linearly to min_lr."""
    horizon: str = "steps"
    """What the decay is planned over: "steps" (run.steps) or "time" (run.max_minutes, which must
    be set: progress is the elapsed fraction of the time budget, or of run.steps if larger, so a
    run stopped by its time limit ends at min_lr). Warmup is in steps either way. A time-planned
    run depends on the machine's speed, so it is not bit-identical across resumes."""


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


SECTIONS = {
    "data": DataConfig,
    "optim": OptimConfig,
    "schedule": ScheduleConfig,
    "run": RunConfig,
    "rollback": RollbackConfig,
    "governor": GovernorConfig,
}


@dataclass
class TrainConfig:
    model: dict
    data: DataConfig
    optim: OptimConfig
    schedule: ScheduleConfig
    run: RunConfig
    rollback: RollbackConfig = field(default_factory=RollbackConfig)
    governor: GovernorConfig = field(default_factory=GovernorConfig)
    curriculum: Optional[CurriculumConfig] = None

    def to_dict(self) -> dict:
        out = {"model": dict(self.model), **{k: dataclasses.asdict(getattr(self, k)) for k in SECTIONS}}
        if self.curriculum is not None:
            out["curriculum"] = self.curriculum.to_dict()
        return out


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


# Ranges of the [data], [optim], [schedule] and [run] fields: key -> (check, what is expected).
def _positive(v: Any) -> bool:
    return v > 0


def _non_negative(v: Any) -> bool:
    return v >= 0


SCHEDULES = ("cosine", "linear", "wsd", "constant")
# Fields where nan/inf mean something: the injected spike of rollback tests and demonstrations.
NON_FINITE_ALLOWED = {"rollback.inject_scale"}

LIMITS: Dict[str, Tuple[Callable[[Any], bool], str]] = {
    "data.seq_len": (_positive, "a positive integer"),
    "data.batch_size": (_positive, "a positive integer"),
    "optim.lr": (_positive, "a positive number"),
    "optim.min_lr": (_non_negative, "a number >= 0"),
    "optim.betas": (lambda v: len(v) == 2 and all(0 <= b < 1 for b in v), "[beta1, beta2], each in [0, 1)"),
    "optim.eps": (_positive, "a positive number"),
    "optim.weight_decay": (_non_negative, "a number >= 0"),
    "optim.grad_clip": (_non_negative, "a number >= 0 (0 disables clipping)"),
    "optim.grad_accum": (_positive, "a positive integer"),
    "schedule.kind": (lambda v: v in SCHEDULES, "one of " + " | ".join(SCHEDULES)),
    "schedule.warmup_steps": (_non_negative, "an integer >= 0"),
    "schedule.decay_fraction": (lambda v: 0 < v <= 1, "a number in (0, 1]"),
    "schedule.horizon": (lambda v: v in ("steps", "time"), "steps | time"),
    "run.steps": (_positive, "a positive integer"),
    "run.max_minutes": (_non_negative, "a number >= 0 (0 = no limit)"),
    "run.seed": (_non_negative, "an integer >= 0"),
    "run.threads": (_non_negative, "an integer >= 0 (0 = automatic)"),
    "run.log_every": (_positive, "a positive integer"),
    "run.eval_every": (_non_negative, "an integer >= 0 (0 disables)"),
    "run.eval_batches": (_non_negative, "an integer >= 0 (0 = the whole split)"),
    "run.sample_every": (_non_negative, "an integer >= 0"),
    "run.sample_tokens": (_non_negative, "an integer >= 0"),
    "run.checkpoint_every": (_non_negative, "an integer >= 0"),
    "run.keep_last": (_non_negative, "an integer >= 0"),
    "run.price_per_hour": (_non_negative, "a number >= 0 (the machine's price; 0 = no cost)"),
}


def _what(annotation: Any) -> str:
    """What a value of `annotation` looks like, for error messages."""
    origin, args = typing.get_origin(annotation), typing.get_args(annotation)
    if origin is typing.Union:
        inner = [a for a in args if a is not type(None)]
        return " or ".join(_what(a) for a in inner) + (" or none" if type(None) in args else "")
    if origin is list or annotation is list:
        plural = {int: "integers", float: "numbers", bool: "booleans", str: "strings", dict: "tables"}
        return f"a list of {plural.get(args[0], _what(args[0]))}" if args else "a list"
    return {int: "an integer", float: "a number", bool: "true or false", str: "a string", dict: "a table"}.get(
        annotation, str(annotation)
    )


def coerce(key: str, value: Any, annotation: Any) -> Any:
    """`value` converted to `annotation` (int, float, bool, str, dict, List[X], Optional[X]), or a
    ConfigError naming `key`, the value and what was expected. Numeric strings become numbers
    (TOML has no `.001`, so `--set optim.lr=.001` arrives as a string); nothing else is guessed."""

    def bad() -> ConfigError:
        return ConfigError(f"{key} = {value!r}: expected {_what(annotation)}")

    origin, args = typing.get_origin(annotation), typing.get_args(annotation)
    if origin is typing.Union:
        if value is None or (isinstance(value, str) and value.lower() in ("none", "null")):
            if type(None) in args:
                return None
            raise bad()
        for a in args:
            if a is type(None):
                continue
            try:
                return coerce(key, value, a)
            except ConfigError:
                pass
        raise bad()
    if annotation is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.lower() in ("true", "false"):
            return value.lower() == "true"
        raise bad()
    if annotation is int:
        if isinstance(value, bool):
            raise bad()
        if isinstance(value, int):
            return value
        if isinstance(value, float) and value.is_integer():
            return int(value)
        if isinstance(value, str):
            try:
                return int(value.strip().replace("_", ""))
            except ValueError:
                raise bad() from None
        raise bad()
    if annotation is float:
        if isinstance(value, bool):
            raise bad()
        if isinstance(value, (int, float)):
            out = float(value)
        elif isinstance(value, str):
            try:
                out = float(value.strip())
            except ValueError:
                raise bad() from None
        else:
            raise bad()
        if not math.isfinite(out) and key not in NON_FINITE_ALLOWED:
            raise ConfigError(f"{key} = {value!r}: expected a finite number")
        return out
    if annotation is str:
        if isinstance(value, str):
            return value
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return str(value)  # `--set run.sample_prompt=123`
        raise bad()
    if annotation is dict:
        if isinstance(value, dict):
            return dict(value)
        raise bad()
    if origin is list or annotation is list:
        if not isinstance(value, (list, tuple)):
            raise bad()
        if not args:
            return list(value)
        return [coerce(f"{key}[{i}]", v, args[0]) for i, v in enumerate(value)]
    raise ConfigError(f"{key}: unsupported annotation {annotation!r}")  # pragma: no cover - a programming error


def _section(name: str, cls: Any, section: dict) -> Any:
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(section) - names)
    if unknown:
        raise ConfigError(f"[{name}] unknown keys: {', '.join(unknown)} (known: {', '.join(sorted(names))})")
    missing = sorted(f.name for f in dataclasses.fields(cls) if f.default is REQUIRED and f.name not in section)
    if missing:
        raise ConfigError(f"[{name}] missing required keys: {', '.join(missing)}")
    values = {}
    for key, value in section.items():
        full = f"{name}.{key}"
        v = coerce(full, value, hints[key])
        limit = LIMITS.get(full)
        if limit is not None and not limit[0](v):
            raise ConfigError(f"{full} = {value!r}: expected {limit[1]}")
        values[key] = v
    return cls(**values)


def _mixture(entries: list) -> list:
    out = []
    for i, src in enumerate(entries):
        key = f"data.mixture[{i}]"
        if set(src) != {"dir", "weight"}:
            raise ConfigError(f"{key} = {src!r}: expected a table with exactly `dir` and `weight`")
        weight = coerce(f"{key}.weight", src["weight"], float)
        if not 0 < weight < 1:
            raise ConfigError(f"{key}.weight = {src['weight']!r}: expected a number in (0, 1)")
        out.append({"dir": coerce(f"{key}.dir", src["dir"], str), "weight": weight})
    return out


def model_section(model: dict, seq_len: int) -> dict:
    """[model] with every value coerced to the family's config annotations, then checked by
    building the family's config (vocab_size "auto" and a missing max_seq_len stand in for the
    values the trainer fills in: the tokenizer's vocabulary and data.seq_len)."""
    from ..models import get_family

    model = dict(model)
    family = model.pop("family", "dense")
    if not isinstance(family, str):
        raise ConfigError(f"model.family = {family!r}: expected a string")
    # `init = "RUN"`: start from that run's (or checkpoint's) weights and model config, which the
    # other [model] keys override; the trainer checks the family and vocabulary against it.
    init = model.pop("init", None)
    if init is not None and (not isinstance(init, str) or not init):
        raise ConfigError(f"model.init = {init!r}: expected a run or checkpoint folder")
    try:
        cls = get_family(family).config_class
    except ValueError as e:
        raise ConfigError(f"[model] family: {e}") from None
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(model) - names)
    if unknown:
        raise ConfigError(f"[model] unknown keys for family {family!r}: {', '.join(unknown)}")
    hints = typing.get_type_hints(cls)
    out: Dict[str, Any] = {"family": family}
    if init is not None:
        out["init"] = init
    for key, value in model.items():
        if key == "vocab_size" and value in ("auto", None):
            out[key] = "auto"
            continue
        out[key] = coerce(f"model.{key}", value, hints[key])
    trial = {k: v for k, v in out.items() if k not in ("family", "init")}
    if trial.get("vocab_size", "auto") == "auto":
        trial["vocab_size"] = 2  # stands in for the tokenizer's vocabulary
    trial.setdefault("max_seq_len", seq_len)
    try:
        cls(**trial)
    except (ValueError, TypeError, ArithmeticError) as e:
        raise ConfigError(f"[model] {e}") from None
    return out


def from_dict(raw: dict) -> TrainConfig:
    if not isinstance(raw, dict):
        raise ConfigError(f"the configuration must be a table of sections, got {type(raw).__name__}")
    unknown_sections = sorted(set(raw) - set(SECTIONS) - {"model", "curriculum"})
    if unknown_sections:
        raise ConfigError(
            f"unknown sections: {', '.join(unknown_sections)} (expected model, {', '.join(SECTIONS)}, curriculum)"
        )
    for name in ("model", *SECTIONS):
        if not isinstance(raw.get(name, {}), dict):
            raise ConfigError(f"[{name}] must be a table, got {raw[name]!r}")
    built = {name: _section(name, cls, dict(raw.get(name, {}))) for name, cls in SECTIONS.items()}
    built["data"].mixture = _mixture(built["data"].mixture)
    try:
        curriculum = parse_curriculum(raw.get("curriculum"))
    except CurriculumError as e:
        raise ConfigError(str(e)) from None
    model = model_section(raw.get("model", {}), max_seq_len(curriculum, built["data"].seq_len))
    if built["data"].doc_mask:
        from ..models import get_family

        if not get_family(model["family"]).supports_doc_mask:
            raise ConfigError(
                f"data.doc_mask = true: the {model['family']!r} family does not take document masks "
                "(the dense family does); set data.doc_mask = false"
            )
        if curriculum is not None:
            raise ConfigError("data.doc_mask = true does not combine with a [curriculum] (its belts carry no masks)")
    for ok, msg in validate_rollback(built["rollback"]) + validate_governor(built["governor"]):
        if not ok:
            raise ConfigError(msg)
    if built["schedule"].horizon == "time" and not built["run"].max_minutes:
        raise ConfigError('schedule.horizon = "time" needs a time budget: set run.max_minutes')
    return TrainConfig(model=model, curriculum=curriculum, **built)


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
