"""The developmental curriculum (SPEC §7): an ordered list of stages, each a weighted mixture of
prepared sources (the LABEL=PATH sources of `sos prepare`, from data.dir and curriculum.dirs),
an advance rule and optional changes on entry (more layers, another sequence length, a
learning-rate scale). Here: the [curriculum] configuration, its validation against the prepared
data, the stage belts (`CurriculumBelt`, one Mixture per stage with its own cursor) and the
stage machine (`Curriculum`: advance rules, transition events, checkpoint state). Growth itself
is the model's (`LanguageModel.grow`); the trainer calls `Curriculum.enter` hooks.

Advance rules: `steps` (the stage's cap, which every rule also obeys), `plateau` (the stage
mixture's validation loss, measured every `eval_every` steps of the stage, improved by less than
`min_delta` over the last `window` measurements), `governor` (the governor's freeze signal,
train/governor.py). After the last stage the run stays in it until run.steps."""

from __future__ import annotations

import dataclasses
import math
import pathlib
from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional, Tuple

ADVANCE_RULES = ("steps", "plateau", "governor")
GROW_WHERE = ("top", "interleave")


class CurriculumError(ValueError):
    """The curriculum cannot be used; the message names the key."""


@dataclass
class StageConfig:
    name: str
    """The stage's name (printed at transitions, in metrics.jsonl events and plot bands)."""
    mixture: Dict[str, float]
    """Source label -> weight (> 0), e.g. {shakespeare = 0.7, logic = 0.3}; weights are
    proportions (normalised). Labels are the LABEL=PATH names given to `sos prepare` in data.dir
    or in one of curriculum.dirs (a source given without a label is called "main")."""
    steps: int
    """Cap: the stage ends after this many optimizer steps whatever its advance rule."""
    advance: str = "steps"
    """steps | plateau | governor: what else may end the stage before its cap."""
    min_delta: float = 0.01
    """plateau: the stage ends when its validation loss improved by less than this (nats) over
    the last `window` measurements."""
    window: int = 3
    """plateau: measurements compared (the newest against the one `window` before it)."""
    eval_every: int = 50
    """plateau: steps of the stage between measurements of its mixture's validation loss."""
    eval_batches: int = 4
    """plateau: validation batches per source per measurement."""
    grow_layers: int = 0
    """Blocks added when the stage begins, computing the identity (dense, MoA, DiscoverLM)."""
    seq_len: int = 0
    """Rows of this length from this stage on (0 = data.seq_len); the model's max_seq_len
    becomes the largest of the stages' lengths."""
    lr_scale: float = 1.0
    """Factor on the scheduled learning rate during this stage."""


@dataclass
class CurriculumConfig:
    stages: List[StageConfig]
    """The ordered stages ([[curriculum.stages]] tables); at least one."""
    dirs: List[str] = field(default_factory=list)
    """Extra prepared folders whose sources stages may use (same tokenizer as data.dir)."""
    grow_where: str = "top"
    """Where grown blocks go: top (above the stack) | interleave (one after each block)."""

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


def _num(key: str, v: Any, kind: type) -> Any:
    if isinstance(v, bool) or not isinstance(v, (int, float)) or (kind is int and not float(v).is_integer()):
        raise CurriculumError(f"{key} = {v!r}: expected {'an integer' if kind is int else 'a number'}")
    out = kind(v)
    if kind is float and not math.isfinite(out):
        raise CurriculumError(f"{key} = {v!r}: expected a finite number")
    return out


def parse(raw: Any) -> Optional[CurriculumConfig]:
    """The [curriculum] table -> CurriculumConfig (None when absent), every key checked; the
    sources are checked against the data later (`check_sources`)."""
    if raw is None:
        return None
    if not isinstance(raw, dict):
        raise CurriculumError(f"[curriculum] must be a table, got {raw!r}")
    known = {"stages", "dirs", "grow_where"}
    unknown = sorted(set(raw) - known)
    if unknown:
        raise CurriculumError(f"[curriculum] unknown keys: {', '.join(unknown)} (known: {', '.join(sorted(known))})")
    stages_raw = raw.get("stages")
    if not isinstance(stages_raw, list) or not stages_raw:
        raise CurriculumError("curriculum.stages: expected a non-empty list of [[curriculum.stages]] tables")
    dirs = raw.get("dirs", [])
    if not isinstance(dirs, list) or not all(isinstance(d, str) for d in dirs):
        raise CurriculumError(f"curriculum.dirs = {dirs!r}: expected a list of folder paths")
    where = raw.get("grow_where", "top")
    if where not in GROW_WHERE:
        raise CurriculumError(f"curriculum.grow_where = {where!r}: expected one of {' | '.join(GROW_WHERE)}")
    fields = {f.name: f for f in dataclasses.fields(StageConfig)}
    stages, names = [], set()
    for i, st in enumerate(stages_raw):
        key = f"curriculum.stages[{i}]"
        if not isinstance(st, dict):
            raise CurriculumError(f"{key}: expected a table, got {st!r}")
        bad = sorted(set(st) - set(fields))
        if bad:
            raise CurriculumError(f"{key}: unknown keys: {', '.join(bad)} (known: {', '.join(fields)})")
        for req in ("name", "mixture", "steps"):
            if req not in st:
                raise CurriculumError(f"{key}.{req} is required")
        name = st["name"]
        if not isinstance(name, str) or not name:
            raise CurriculumError(f"{key}.name = {name!r}: expected a non-empty string")
        if name in names:
            raise CurriculumError(f"{key}.name = {name!r}: stage names must be unique")
        names.add(name)
        mix = st["mixture"]
        if not isinstance(mix, dict) or not mix:
            raise CurriculumError(f"{key}.mixture = {mix!r}: expected a table of source = weight")
        mixture = {}
        for label, w in mix.items():
            w = _num(f"{key}.mixture.{label}", w, float)
            if w <= 0:
                raise CurriculumError(f"{key}.mixture.{label} = {w!r}: expected a positive weight")
            mixture[str(label)] = w
        vals: Dict[str, Any] = {"name": name, "mixture": mixture}
        for fname in ("steps", "window", "eval_every", "eval_batches", "grow_layers", "seq_len"):
            if fname in st:
                vals[fname] = _num(f"{key}.{fname}", st[fname], int)
        for fname in ("min_delta", "lr_scale"):
            if fname in st:
                vals[fname] = _num(f"{key}.{fname}", st[fname], float)
        if "advance" in st:
            vals["advance"] = st["advance"]
        s = StageConfig(**vals)
        checks = [
            (s.steps >= 1, f"{key}.steps = {s.steps}: expected a positive integer (the stage's cap)"),
            (s.advance in ADVANCE_RULES, f"{key}.advance = {s.advance!r}: expected {' | '.join(ADVANCE_RULES)}"),
            (s.min_delta >= 0, f"{key}.min_delta = {s.min_delta}: expected a number >= 0"),
            (s.window >= 1, f"{key}.window = {s.window}: expected a positive integer"),
            (s.eval_every >= 1, f"{key}.eval_every = {s.eval_every}: expected a positive integer"),
            (s.eval_batches >= 1, f"{key}.eval_batches = {s.eval_batches}: expected a positive integer"),
            (s.grow_layers >= 0, f"{key}.grow_layers = {s.grow_layers}: expected an integer >= 0"),
            (s.seq_len >= 0, f"{key}.seq_len = {s.seq_len}: expected an integer >= 0 (0 = data.seq_len)"),
            (s.lr_scale > 0, f"{key}.lr_scale = {s.lr_scale}: expected a positive number"),
        ]
        for ok, msg in checks:
            if not ok:
                raise CurriculumError(msg)
        stages.append(s)
    return CurriculumConfig(stages=stages, dirs=list(dirs), grow_where=where)


def max_seq_len(cur: Optional[CurriculumConfig], data_seq_len: int) -> int:
    """The longest row any stage uses (the model's context must hold it)."""
    if cur is None:
        return data_seq_len
    return max([data_seq_len] + [s.seq_len for s in cur.stages if s.seq_len])


@dataclass
class Source:
    label: str
    dir: pathlib.Path
    train: List[str]
    val: List[str]
    val_bytes_per_token: float


def find_sources(data_dir: pathlib.Path, dirs: List[str], tokenizer_bytes: bytes) -> Dict[str, Source]:
    """Every labelled source of data.dir and the extra folders, refusing missing folders, other
    tokenizers and labels defined twice."""
    from ..data import read_meta

    out: Dict[str, Source] = {}
    for i, d in enumerate([str(data_dir), *dirs]):
        key = "data.dir" if i == 0 else f"curriculum.dirs[{i - 1}]"
        try:
            meta = read_meta(d)
        except (FileNotFoundError, ValueError) as e:
            raise CurriculumError(f"{key} = {d!r}: {e}") from None
        if i and pathlib.Path(meta["tokenizer"]).read_bytes() != tokenizer_bytes:
            raise CurriculumError(f"{key} = {d!r} uses a different tokenizer than data.dir")
        for label, src in meta.get("sources", {}).items():
            if label in out:
                raise CurriculumError(f"{key} = {d!r}: source {label!r} is also defined in {out[label].dir}")
            train, val = src["shards"].get("train", []), src["shards"].get("val", [])
            counts = src.get("counts", {}).get("val") or src.get("counts", {}).get("train") or {}
            bpt = counts["bytes"] / counts["tokens"] if counts.get("tokens") and counts.get("bytes") else 1.0
            out[label] = Source(label, pathlib.Path(d), list(train), list(val) or list(train), bpt)
    return out


def check_sources(cur: CurriculumConfig, sources: Dict[str, Source]) -> None:
    """Every stage's mixture names known sources with training tokens."""
    for i, st in enumerate(cur.stages):
        for label in st.mixture:
            if label not in sources:
                raise CurriculumError(
                    f"curriculum.stages[{i}].mixture.{label}: unknown source {label!r} "
                    f"(prepared sources: {', '.join(sorted(sources)) or 'none'})"
                )
            if not sources[label].train:
                raise CurriculumError(
                    f"curriculum.stages[{i}].mixture.{label}: source {label!r} has no training shards"
                )


class CurriculumBelt:
    """The trainer's belt under a curriculum: one Rust Mixture per stage (its own cursor),
    drawing from the current stage's. `state()` holds the stage and every stage's cursor."""

    def __init__(self, cur: CurriculumConfig, sources: Dict[str, Source], batch_size: int, seq_len: int, seed: int):
        from ..data import Belt, Mixture

        self.stage = 0
        self.mixtures = []
        for i, st in enumerate(cur.stages):
            t = st.seq_len or seq_len
            parts = [
                (Belt(sources[label].train, seq_len=t, batch_size=batch_size, seed=seed + 1000 * i + j), w)
                for j, (label, w) in enumerate(sorted(st.mixture.items()))
            ]
            self.mixtures.append(Mixture(parts, seed=seed + 1000 * i))

    @property
    def current(self):
        return self.mixtures[self.stage]

    @property
    def seq_len(self) -> int:
        return int(self.current.seq_len)

    @property
    def batch_size(self) -> int:
        return int(self.current.batch_size)

    def next_batch(self):
        return self.current.next_batch()

    def state(self) -> dict:
        return {"stage": self.stage, "stages": [m.state() for m in self.mixtures]}

    def load_state(self, state: dict) -> None:
        if set(state) != {"stage", "stages"} or len(state["stages"]) != len(self.mixtures):
            raise ValueError(
                f"the cursor holds {len(state.get('stages', []))} stage belts, the curriculum has {len(self.mixtures)}"
            )
        for m, s in zip(self.mixtures, state["stages"]):
            m.load_state(s)
        self.stage = int(state["stage"])


@dataclass
class Transition:
    """One stage change, as written to metrics.jsonl (`event = "stage"`)."""

    step: int
    stage: int
    name: str
    reason: str
    grew: int = 0
    seq_len: int = 0
    lr_scale: float = 1.0

    def record(self) -> dict:
        return {"event": "stage", **dataclasses.asdict(self)}


class Curriculum:
    """The stage machine: which stage is current, when it began, why, and the plateau tracker."""

    def __init__(self, cur: CurriculumConfig, sources: Dict[str, Source], belt: CurriculumBelt, data_seq_len: int):
        self.cfg, self.sources, self.belt = cur, sources, belt
        self.data_seq_len = data_seq_len
        self.history: List[dict] = [{"stage": 0, "name": cur.stages[0].name, "step": 0, "reason": "start"}]
        self.val_losses: List[float] = []  # the current stage's plateau measurements
        self.grown = 0  # blocks added so far (replayed on resume)

    @property
    def index(self) -> int:
        return self.belt.stage

    @property
    def stage(self) -> StageConfig:
        return self.cfg.stages[self.index]

    @property
    def started(self) -> int:
        return int(self.history[-1]["step"])

    @property
    def lr_scale(self) -> float:
        return self.stage.lr_scale

    def tokens_per_step(self, batch: int, accum: int) -> int:
        return batch * (self.stage.seq_len or self.data_seq_len) * accum

    def growth_before(self, index: int) -> int:
        """Blocks the stages up to and including `index` add."""
        return sum(s.grow_layers for s in self.cfg.stages[: index + 1])

    # ---- advance rules -------------------------------------------------------------------------
    def wants_eval(self, step: int) -> bool:
        return self.stage.advance == "plateau" and (step - self.started) % self.stage.eval_every == 0

    def observe_val(self, loss: float) -> None:
        self.val_losses.append(float(loss))

    def reason_to_advance(self, step: int, frozen: bool) -> Optional[str]:
        """Why the current stage ends after `step`, or None. The last stage never ends."""
        if self.index + 1 >= len(self.cfg.stages):
            return None
        st = self.stage
        if step - self.started >= st.steps:
            return f"cap of {st.steps} steps"
        if st.advance == "plateau" and len(self.val_losses) > st.window:
            gain = self.val_losses[-1 - st.window] - self.val_losses[-1]
            if gain < st.min_delta:
                return f"plateau: val loss improved {gain:.4f} < min_delta {st.min_delta} over {st.window} evaluations"
        if st.advance == "governor" and frozen:
            return "governor freeze signal"
        return None

    def advance(self, step: int, reason: str) -> Transition:
        """Moves to the next stage; the caller applies its entry changes (grow, seq_len, lr)."""
        self.belt.stage += 1
        st = self.stage
        self.val_losses = []
        self.history.append({"stage": self.index, "name": st.name, "step": step, "reason": reason})
        return Transition(
            step, self.index, st.name, reason, st.grow_layers, st.seq_len or self.data_seq_len, st.lr_scale
        )

    # ---- validation of the stage mixture ----------------------------------------------------------
    def stage_val(self, model, batch_size: int) -> Dict[str, float]:
        """Validation loss of each source of the current stage and their weighted mean."""
        from ..data import Belt
        from .evaluate import evaluate

        st = self.stage
        t = st.seq_len or self.data_seq_len
        total_w = sum(st.mixture.values())
        out, mean = {}, 0.0
        for label, w in sorted(st.mixture.items()):
            src = self.sources[label]
            belt = Belt(src.val, seq_len=t, batch_size=batch_size, seed=0)
            r = evaluate(model, belt, st.eval_batches, src.val_bytes_per_token)
            out[f"val_loss.{label}"] = r["val_loss"]
            mean += w / total_w * r["val_loss"]
        out["stage_val_loss"] = mean
        return out

    # ---- checkpoint state ----------------------------------------------------------------------------
    def state(self) -> dict:
        return {
            "stage": self.index,
            "name": self.stage.name,
            "history": [dict(h) for h in self.history],
            "plateau": list(self.val_losses),
            "grown": self.grown,
            "config": self.cfg.to_dict(),
        }

    def load_state(self, state: dict) -> None:
        """Takes over a checkpoint's curriculum state (the belt cursors are loaded by the belt).
        A checkpoint written under another curriculum is refused, naming the key."""
        if state.get("config") != self.cfg.to_dict():
            raise CurriculumError(
                "[curriculum] differs from the one this run was trained with (its checkpoint's curriculum.config); "
                "resume with the original curriculum or start a new run.out"
            )
        self.history = [dict(h) for h in state["history"]]
        self.val_losses = [float(v) for v in state["plateau"]]
        self.grown = int(state["grown"])


def curriculum_state_ok(v: Any) -> bool:
    """Schema check of state.json's `curriculum` (null or the table `Curriculum.state` writes)."""
    if v is None:
        return True
    if not isinstance(v, dict) or set(v) != {"stage", "name", "history", "plateau", "grown", "config"}:
        return False
    return (
        isinstance(v["stage"], int)
        and v["stage"] >= 0
        and isinstance(v["name"], str)
        and isinstance(v["history"], list)
        and all(isinstance(h, dict) and {"stage", "name", "step", "reason"} <= set(h) for h in v["history"])
        and isinstance(v["plateau"], list)
        and all(isinstance(x, (int, float)) for x in v["plateau"])
        and isinstance(v["grown"], int)
        and isinstance(v["config"], dict)
    )


def describe(cur: CurriculumConfig) -> str:
    parts = []
    for s in cur.stages:
        mix = ", ".join(f"{k} {v:g}" for k, v in s.mixture.items())
        extra = "".join(
            [
                f", +{s.grow_layers} layers" if s.grow_layers else "",
                f", seq {s.seq_len}" if s.seq_len else "",
                f", lr x{s.lr_scale:g}" if s.lr_scale != 1 else "",
            ]
        )
        parts.append(f"{s.name} [{mix}; {s.advance}, cap {s.steps}{extra}]")
    return "curriculum: " + " -> ".join(parts)


__all__: Tuple[str, ...] = (
    "CurriculumBelt",
    "Curriculum",
    "CurriculumConfig",
    "CurriculumError",
    "StageConfig",
    "Transition",
    "check_sources",
    "curriculum_state_ok",
    "find_sources",
    "max_seq_len",
    "parse",
)
