"""The trainer's hooks for the curriculum (train/curriculum.py) and the governor
(train/governor.py): built before the first step (refusing bad curricula and families that
cannot grow), called once per optimizer step, and carried through checkpoints. Keeping them
here leaves the training loop in trainer.py a few lines longer, not a second loop."""

from __future__ import annotations

import pathlib
from typing import TYPE_CHECKING, Optional

from .. import optim
from ..models import build_model
from ..models.base import GrowthError
from . import checkpoint as ckpt
from .curriculum import (
    Curriculum,
    CurriculumBelt,
    CurriculumError,
    Transition,
    check_sources,
    find_sources,
)
from .curriculum import describe as describe_curriculum
from .governor import Governor

if TYPE_CHECKING:  # pragma: no cover
    from .trainer import Trainer


class StageHooks:
    def __init__(self, trainer: "Trainer"):
        self.t = trainer
        cfg = trainer.cfg
        self.curriculum: Optional[Curriculum] = None
        self.belt: Optional[CurriculumBelt] = None
        cur = cfg.curriculum
        if cur is not None:
            sources = find_sources(trainer.data.dir, cur.dirs, trainer.data.tokenizer_path.read_bytes())
            check_sources(cur, sources)
            if any(s.grow_layers for s in cur.stages):
                self._check_can_grow(cur.grow_where)
            self.belt = CurriculumBelt(cur, sources, cfg.data.batch_size, cfg.data.seq_len, cfg.run.seed)
            self.curriculum = Curriculum(cur, sources, self.belt, cfg.data.seq_len)
        g = cfg.governor
        on = g.enabled if g.enabled is not None else bool(trainer.model.routers())
        self.governor: Optional[Governor] = Governor(g, trainer.model, cfg.run.seed) if on else None
        if cur is not None and self.governor is None:
            for i, s in enumerate(cur.stages):
                if s.advance == "governor":
                    raise CurriculumError(
                        f'curriculum.stages[{i}].advance = "governor" needs the governor: set governor.enabled = true'
                    )
        if self.curriculum is not None and cur is not None and cur.stages[0].grow_layers:
            self._grow(cur.stages[0].grow_layers)

    def _check_can_grow(self, where: str) -> None:
        """Grows a throwaway copy of the model, so a family that cannot grow is refused now."""
        t = self.t
        trial = build_model(t.family, dict(t.model_cfg))
        try:
            trial.grow(1, where)
        except GrowthError as e:
            raise CurriculumError(f"curriculum: a stage sets grow_layers but {e}") from None

    # ---- growth --------------------------------------------------------------------------------------
    def _grow(self, n: int) -> None:
        """Adds n identity blocks; AdamW moments of existing parameters carry over (by identity),
        new parameters start at zero; the rollback snapshot and the governor follow."""
        t = self.t
        assert self.curriculum is not None
        old = {id(p): (m, v) for p, m, v in zip(t.opt.params, t.opt.m, t.opt.v)}
        t.model.grow(n, self.curriculum.cfg.grow_where)
        self.curriculum.grown += n
        o = t.cfg.optim
        opt = optim.AdamW(t.model.parameters(), lr=o.lr, betas=o.betas, eps=o.eps, weight_decay=o.weight_decay)
        for i, p in enumerate(opt.params):
            if id(p) in old:
                opt.m[i], opt.v[i] = old[id(p)]
        opt.step_count = t.opt.step_count
        t.opt = opt
        t.names = [name for name, _ in t.model.named_parameters()]
        t.model_cfg = _asdict(t.model.config)
        if hasattr(t, "rollback"):  # built after the hooks: stage 0's growth precedes it
            t.rollback.opt, t.rollback.names = t.opt, t.names
        if self.governor is not None:
            self.governor.rebind(t.model)

    def replay(self, folder: pathlib.Path, state: dict) -> None:
        """Before a checkpoint is loaded: refuses a changed curriculum, then grows the model as
        the checkpoint's stages did (the growth of stages 1..k, in order)."""
        saved = state.get("curriculum")
        cur = self.curriculum
        if (saved is None) != (cur is None):
            raise CurriculumError(
                f"{folder} was trained {'with' if saved is not None else 'without'} a [curriculum] section; "
                "the config must match to resume"
            )
        if cur is None or saved is None:
            return
        if saved["config"] != cur.cfg.to_dict():
            raise CurriculumError(
                f"{folder}: [curriculum] differs from the one this run was trained with; "
                "resume with the original curriculum or choose another run.out"
            )
        if saved["grown"] == cur.grown:
            return
        want = [s.grow_layers for s in cur.cfg.stages[1 : saved["stage"] + 1] if s.grow_layers]
        if cur.grown != cur.cfg.stages[0].grow_layers or sum(want) + cur.grown != saved["grown"]:
            raise ckpt.CheckpointError(
                f"{folder}: its curriculum grew {saved['grown']} blocks; this run cannot match it"
            )
        for n in want:
            self._grow(n)

    def load_state(self, state: dict) -> None:
        if self.curriculum is not None:
            self.curriculum.load_state(state["curriculum"])
        if self.governor is not None and state.get("governor") is not None:
            self.governor.load_state(state["governor"])

    # ---- per step ---------------------------------------------------------------------------------------
    @property
    def lr_factor(self) -> float:
        f = 1.0
        if self.curriculum is not None:
            f *= self.curriculum.lr_scale
        if self.governor is not None:
            f *= self.governor.lr_factor
        return f

    def after_step(self, ids, metrics) -> None:
        t = self.t
        step = t.step
        gov = self.governor
        if gov is not None and gov.due(step):
            record, events = gov.step(step, ids)
            metrics.write(record)
            for e in events:
                metrics.write(e)
                metrics.info(f"governor at step {step}: {_describe_event(e)}")
        cur = self.curriculum
        if cur is None:
            return
        if cur.wants_eval(step) and step > cur.started:
            v = cur.stage_val(t.model, t.cfg.data.batch_size)
            cur.observe_val(v["stage_val_loss"])
            metrics.write({"step": step, "stage": cur.stage.name, **v})
        reason = cur.reason_to_advance(step, frozen=gov.frozen if gov is not None else False)
        if reason is not None:
            self._enter(cur.advance(step, reason), metrics)

    def _enter(self, tr: Transition, metrics) -> None:
        if tr.grew:
            self._grow(tr.grew)
        self.t.rollback.take(self.t.step)  # the last good state is now the new stage's first
        metrics.write(tr.record())
        extra = "".join(
            [
                f"; +{tr.grew} layers (now {self.t.model.config.n_layers})" if tr.grew else "",
                f"; seq_len {tr.seq_len}",
                f"; lr x{tr.lr_scale:g}" if tr.lr_scale != 1 else "",
            ]
        )
        metrics.info(f"stage {tr.stage} '{tr.name}' begins at step {tr.step} ({tr.reason}){extra}")

    def tokens_seen(self, step: int, tokens_per_step: int) -> int:
        cur = self.curriculum
        if cur is None:
            return step * tokens_per_step
        o = self.t.cfg
        total = 0
        hist = cur.history
        for i, h in enumerate(hist):
            end = hist[i + 1]["step"] if i + 1 < len(hist) else step
            st = cur.cfg.stages[h["stage"]]
            total += (end - h["step"]) * o.data.batch_size * (st.seq_len or o.data.seq_len) * o.optim.grad_accum
        return total

    def describe(self, metrics) -> None:
        if self.curriculum is not None:
            metrics.info(describe_curriculum(self.curriculum.cfg))
            metrics.info(f"stage {self.curriculum.index} '{self.curriculum.stage.name}'")
        if self.governor is not None:
            g = self.governor.cfg
            metrics.info(
                f"governor: every {g.every} steps on {g.tokens} tokens, "
                f"router T band [{g.band_low:g}, {g.band_high:g}], {len(self.t.model.routers())} routers"
            )


def _asdict(config) -> dict:
    import dataclasses

    return dataclasses.asdict(config)


def _describe_event(e: dict) -> str:
    if e["action"] == "router_temperature":
        return f"{e['router']} T-EMA {e['T_ema']:.3g} -> tau {e['tau_from']:.3g} -> {e['tau_to']:.3g}"
    if e["action"] == "lr_cut":
        return (
            f"sustained collapse (router T-EMA {e['worst_router_T_ema']:.3g}, act T-EMA {e['worst_act_T_ema']:.3g}): "
            f"lr factor {e['lr_factor_from']:g} -> {e['lr_factor_to']:g}"
        )
    return f"freeze signal (activation T-EMA {', '.join(f'{v:.3g}' for v in e['act_T_ema_trace'])})"


__all__ = ["StageHooks"]
