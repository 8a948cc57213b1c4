"""The training loop behind `sos train`: build the model and data from a TrainConfig, resume from
the newest valid checkpoint, train with AdamW, a schedule, accumulation and clipping, and log,
validate, sample and checkpoint as configured. Ctrl-C stops after the current step with a
checkpoint; SIGKILL loses at most the steps since the last checkpoint, and resuming reproduces
the uninterrupted run bit for bit (data cursor, optimizer state and step are all restored)."""

from __future__ import annotations

import dataclasses
import json
import os
import pathlib
import platform
import shutil
import signal
import time
from typing import Optional

import numpy as np

import sos_rs

from .. import _core, optim
from ..dist import setup as dist_setup
from ..errors import SosError
from ..models import build_model
from . import checkpoint as ckpt
from .config import TrainConfig, dumps
from .cost import CostMeter
from .curriculum import CurriculumError
from .curriculum import max_seq_len as curriculum_seq_len
from .data_setup import DataSetup
from .evaluate import doc_masks, evaluate
from .memory import available_bytes, peak_rss_bytes, rss_bytes
from .metrics import MetricsLog, Timer, read_metrics
from .rollback import SNAPSHOT_FILE, Rollback, all_finite
from .run_io import portable_paths
from .run_lock import RunLock, RunLockedError
from .schedule import describe, lr_at
from .stages import StageHooks


class TrainingError(RuntimeError):
    """Training cannot start or continue; the message says why."""


def model_config(cfg: TrainConfig, vocab_size: int, base: Optional[dict] = None) -> dict:
    """[model] resolved against the data (and against `base`, the model config of the run that
    `[model] init` names, which the other [model] keys override)."""
    m = dict(base or {})
    m.update({k: v for k, v in cfg.model.items() if k not in ("family", "init")})
    given = m.get("vocab_size", "auto")
    if given in ("auto", None):
        m["vocab_size"] = vocab_size
    elif int(given) != vocab_size:
        raise TrainingError(
            f"vocabulary mismatch: [model] vocab_size = {given} but the tokenizer and shards have {vocab_size}"
        )
    longest = curriculum_seq_len(cfg.curriculum, cfg.data.seq_len)  # the longest row of any stage
    m.setdefault("max_seq_len", longest)
    if m["max_seq_len"] < longest:
        raise TrainingError(
            f"[model] max_seq_len = {m['max_seq_len']} is shorter than the longest row ({longest}: data.seq_len "
            "or a curriculum stage's seq_len)"
        )
    m.setdefault("seed", cfg.run.seed)
    return m


def optimizer_arrays(opt: optim.AdamW, names: list) -> ckpt.LazyArrays:
    """AdamW's moments by `m.NAME` / `v.NAME`, each copied out only when the checkpoint writes it."""
    tensors = {}
    for name, m, v in zip(names, opt.m, opt.v):
        tensors[f"m.{name}"], tensors[f"v.{name}"] = m, v
    return ckpt.LazyArrays({k: tuple(t.shape) for k, t in tensors.items()}, lambda k: tensors[k].numpy())


def load_optimizer(opt: optim.AdamW, names: list, arrays: dict, step_count: int) -> None:
    for name, m, v in zip(names, opt.m, opt.v):
        for key, dst in ((f"m.{name}", m), (f"v.{name}", v)):
            if key not in arrays:
                raise ckpt.CheckpointError(f"optimizer state lacks {key}")
            dst.copy_(_core.Tensor(np.ascontiguousarray(arrays[key], dtype=np.float32)))
    opt.step_count = step_count


class Trainer:
    def __init__(self, cfg: TrainConfig, resume: str = "auto", log=print):
        self.cfg = cfg
        self.out = pathlib.Path(cfg.run.out)
        self.dist = dist_setup(log)  # first: an MPI rank takes its share of cores before the pool starts
        self.log = log if self.dist.is_root else (lambda _msg: None)
        if cfg.run.threads:
            sos_rs.set_num_threads(cfg.run.threads)
        self.data = DataSetup(cfg, rank=self.dist.rank, world=self.dist.world)
        init = self._init_weights(cfg.model.get("init"))
        mcfg = model_config(cfg, self.data.vocab_size, init[1] if init else None)
        self.family = init[0] if init else cfg.model.get("family", "dense")
        self.model = build_model(self.family, mcfg)
        if init:  # a checkpoint found by _resume replaces these
            self.model.load_state_dict(init[2])
        self.model_cfg = dataclasses.asdict(self.model.config)
        self.names = [n for n, _ in self.model.named_parameters()]
        o = cfg.optim
        self.opt = optim.AdamW(self.model.parameters(), lr=o.lr, betas=o.betas, eps=o.eps, weight_decay=o.weight_decay)
        self.step = 0
        self.best_val: Optional[float] = None
        self.elapsed_before = 0.0
        self.cpu_before = 0.0
        self.meter = CostMeter(cfg.run.price_per_hour)
        try:  # the curriculum and the governor (train/stages.py); refused here, before any step
            self.hooks = StageHooks(self)
        except CurriculumError as e:
            raise TrainingError(str(e)) from None
        self.train_belt = self.hooks.belt if self.hooks.belt is not None else self.data.train_belt()
        self.rollback = Rollback(cfg.rollback, self.model, self.opt, self.names, self.train_belt)
        self._check_memory()
        self.lock = RunLock(self.out)
        self.dist.start(self, resume)  # MPI: rank 0 locks and picks the checkpoint, every rank loads it

    def _lock_and_resume(self, resume: str) -> Optional[pathlib.Path]:
        try:
            self.lock.acquire(self.log)  # held until train() ends; before any checkpoint is read
        except RunLockedError as e:
            raise TrainingError(str(e)) from None
        return self._resume(resume)

    # ---- set-up -------------------------------------------------------------------------------
    def _init_weights(self, init: Optional[str]) -> Optional[tuple]:
        """(family, model config, weights) of the run `[model] init` names (an imported one, say)."""
        if not init:
            return None
        from .run_io import load_model

        try:
            model, state, folder = load_model(init, self.log)
        except ckpt.CheckpointError as e:
            raise TrainingError(f"[model] init = {init!r}: {e}") from None
        family = self.cfg.model.get("family", state["model_family"])
        if family != state["model_family"]:
            raise TrainingError(
                f"[model] family = {family!r} but init {folder} holds a {state['model_family']!r} model"
            )
        self.log(f"initialised from {folder}")
        return state["model_family"], dict(state["model_config"]), model.state_dict()

    def _check_memory(self) -> None:
        n = self.model.num_parameters()
        est = self.model.estimate_memory(self.cfg.data.batch_size, self.cfg.data.seq_len).as_dict()
        avail = available_bytes()
        self.log(
            f"model: {self.family}, {n / 1e6:.2f}M parameters | estimated memory {est['total'] / 2**20:.0f} MiB "
            f"(weights+optimizer {est['weights_and_optimizer'] / 2**20:.0f} MiB, "
            f"activations {est['activations'] / 2**20:.0f} MiB, runtime {est['runtime'] / 2**20:.0f} MiB, "
            f"tensor pool {est['pool'] / 2**20:.0f} MiB), "
            f"available {avail / 2**20:.0f} MiB"
        )
        if est["total"] > avail:
            raise TrainingError(
                f"the run needs about {est['total'] / 2**30:.1f} GiB but only {avail / 2**30:.1f} GiB is available; "
                "reduce data.batch_size, data.seq_len or the model size"
            )

    def _resume(self, resume: str) -> Optional[pathlib.Path]:
        root = self.out / "checkpoints"
        if resume in ("none", "no", ""):
            if ckpt.list_steps(root):
                raise TrainingError(
                    f"{root} already holds checkpoints; use --resume auto to continue or choose another run.out"
                )
            return None
        if resume == "auto":
            folder = ckpt.load_latest(root, self._restore, log=self.log)
        else:
            folder = self._restore(pathlib.Path(resume), *ckpt.load(pathlib.Path(resume), self.log))
        if folder is None:
            return None
        self._truncate_metrics()
        self.log(f"resumed from {folder} at step {self.step}")
        return folder

    def _restore(self, folder: pathlib.Path, model_arrays: dict, opt_arrays: dict, state: dict) -> pathlib.Path:
        """Takes over a loaded checkpoint. Everything is checked before anything is changed, so a
        refused checkpoint (CheckpointError) leaves the fresh model, optimizer and belt intact
        (except blocks a curriculum grew to match the checkpoint, see StageHooks.replay)."""
        try:
            self.hooks.replay(folder, state)  # grows the model as the checkpoint's stages did
        except CurriculumError as e:
            raise TrainingError(str(e)) from None
        if state["model_family"] != self.family or state["model_config"] != self.model_cfg:
            raise TrainingError(
                f"{folder} was written for a different model "
                f"({state['model_family']}, {state['model_config']}); "
                "the config must match to resume"
            )
        shapes = {n: tuple(p.shape) for n, p in self.model.named_parameters()}
        opt_shapes = {f"{k}.{n}": s for n, s in shapes.items() for k in ("m", "v")}
        shapes.update({n: tuple(b.shape) for n, b in self.model.named_buffers()})  # state_dict holds buffers too
        ckpt.check_arrays(folder, "model.safetensors", model_arrays, shapes)
        ckpt.check_arrays(folder, "optimizer.safetensors", opt_arrays, opt_shapes)
        snapshot = ckpt.load_extra(folder, SNAPSHOT_FILE)  # read (and verified) before anything changes
        try:
            self.train_belt.load_state(state["belt"])
        except (SosError, ValueError, TypeError, KeyError, OverflowError) as e:
            raise TrainingError(
                f"{folder}: its data cursor does not fit {self.data.dir} (was the run trained on other data?): {e}"
            ) from None
        rng = state["rng"].get("model")
        if rng is not None:
            try:
                self.model.set_rng_state(rng)
            except ValueError as e:
                raise ckpt.CheckpointError(f"{folder}: {e}") from None
        self.model.load_state_dict(model_arrays)
        load_optimizer(self.opt, self.names, opt_arrays, state["optimizer_step"])
        self.step = state["step"]
        self.best_val = state.get("best_val_loss")
        self.elapsed_before = state.get("elapsed_s", 0.0)
        self.cpu_before = state.get("cpu_s", 0.0)
        self.rollback.load_state(state.get("rollback"), snapshot, self.step)
        self.hooks.load_state(state)
        return folder

    def _truncate_metrics(self) -> None:
        """Drops metric lines of steps after the checkpoint: they are about to be redone."""
        path = self.out / "metrics.jsonl"
        if not path.exists():
            return
        keep = [json.dumps(r) for r in read_metrics(path) if r.get("step", 0) <= self.step]
        tmp = path.with_suffix(".tmp")
        tmp.write_text("".join(line + "\n" for line in keep))
        os.replace(tmp, path)

    # ---- checkpoints ---------------------------------------------------------------------------
    def save(self, elapsed: float, val_loss: Optional[float]) -> pathlib.Path:
        if not all_finite([p.data for p in self.model.parameters()] + self.opt.m + self.opt.v):
            raise TrainingError(
                f"refusing to write a checkpoint at step {self.step}: weights or AdamW moments are not finite; "
                "the previous checkpoints are intact"
            )
        if not self.dist.is_root:  # rank 0 alone writes checkpoints
            return self.out / "checkpoints"
        rollback_state, snapshot = self.rollback.state(self.step)
        state = {
            "model_family": self.family,
            "model_config": self.model_cfg,
            "train_config": self.cfg.to_dict(),
            "optimizer_step": self.opt.step_count,
            "belt": self.train_belt.state(),
            "rng": {
                "seed": self.cfg.run.seed,
                "note": "sampling seeds derive from (seed, step); `model` is the family's own generator",
                **({"model": rs} if (rs := self.model.rng_state()) is not None else {}),
            },
            "curriculum": self.hooks.curriculum.state() if self.hooks.curriculum else None,
            "governor": self.hooks.governor.state() if self.hooks.governor else None,
            "val_loss": val_loss,
            "best_val_loss": self.best_val,
            "elapsed_s": elapsed,
            **self.meter.fields(elapsed),
            "versions": {"sos_rs": sos_rs.__version__, "python": platform.python_version(), "numpy": np.__version__},
            "tokenizer": "tokenizer.json",  # the run folder's copy (written by train())
            "data_dirs": portable_paths(self.out, self.cfg.data.dir, self.cfg.data.mixture),
            "eot_id": self.data.eot_id,
            "rollback": rollback_state,
            "ranks": self.dist.world,
        }
        folder = ckpt.save(
            self.out / "checkpoints",
            self.step,
            self.model.lazy_state_dict(),
            optimizer_arrays(self.opt, self.names),
            state,
            extra=None if snapshot is None else {SNAPSHOT_FILE: snapshot},
        )
        ckpt.prune(self.out / "checkpoints", self.cfg.run.keep_last)
        return folder

    # ---- the loop ------------------------------------------------------------------------------
    clock = staticmethod(time.perf_counter)  # the training clock (tests substitute a fake one)

    def lr(self, step: int, elapsed_s: float = 0.0) -> float:
        """The learning rate of `step`; `elapsed_s` (training time of the whole run, resumes
        included) drives the decay when schedule.horizon is "time"."""
        o, s, r = self.cfg.optim, self.cfg.schedule, self.cfg.run
        frac = elapsed_s / (60 * r.max_minutes) if s.horizon == "time" and r.max_minutes else None
        return lr_at(step, r.steps, o.lr, o.min_lr, s.kind, s.warmup_steps, s.decay_fraction, frac)

    def _out_of_time(self, timer: Timer) -> bool:
        """run.max_minutes is reached: this invocation's time, or the whole run's under a
        time-planned schedule (its decay was planned over the whole budget)."""
        r = self.cfg.run
        used = timer.elapsed() + (self.elapsed_before if self.cfg.schedule.horizon == "time" else 0.0)
        return bool(r.max_minutes) and self.dist.root_decides(used > r.max_minutes * 60)

    def validate(self) -> dict:
        belt = self.data.val_belt()
        return evaluate(self.model, belt, self.cfg.run.eval_batches, self.data.val_bytes_per_token)

    def sample_text(self, tokens: int) -> str:
        from ..sample import decode, generate

        prompt = self.data.encode(self.cfg.run.sample_prompt) if self.cfg.run.sample_prompt else [self.data.eot_id]
        new = generate(
            self.model, prompt, tokens, temperature=0.8, top_k=200, seed=self.cfg.run.seed + self.step, stop_id=None
        )
        return self.cfg.run.sample_prompt + decode(self.data.tokenizer, new, self.data.eot_id)

    def train(self) -> dict:
        cfg, run = self.cfg, self.cfg.run
        if self.dist.is_root:
            self.out.mkdir(parents=True, exist_ok=True)
            (self.out / "config.json").write_text(dumps(cfg))
            shutil.copyfile(self.data.tokenizer_path, self.out / "tokenizer.json")
        metrics = self.dist.metrics_log(self.out / "metrics.jsonl", run.steps, self.step)
        metrics.info(f"threads {sos_rs.num_threads()} | SIMD {sos_rs.isa()} | {self.data.describe()}")
        if self.data.val_note() and run.eval_every:
            metrics.info(self.data.val_note())
        stop = {"flag": False}
        prev = signal.signal(signal.SIGINT, lambda *_: stop.update({self.dist.stop_key: True}))
        timer = Timer(self.clock)
        sched = cfg.schedule
        metrics.info(describe(sched.kind, sched.horizon, run.steps, sched.warmup_steps, run.max_minutes))
        self.hooks.describe(metrics)
        self.meter = CostMeter(run.price_per_hour, self.elapsed_before, self.cpu_before)
        tokens_per_step = cfg.data.batch_size * cfg.data.seq_len * cfg.optim.grad_accum * self.dist.world
        micro = cfg.optim.grad_accum * self.dist.world  # micro-batches per step, over all ranks
        seed = _core.Tensor.full([], 1.0 / micro)
        last_val: Optional[float] = None
        window_t, window_steps = time.perf_counter(), 0
        result = {}
        if self.rollback.snapshot is None and cfg.rollback.enabled:
            self.rollback.take(self.step)
        try:
            while self.step < run.steps and not stop["flag"]:
                lr = (
                    self.lr(self.step, self.elapsed_before + timer.elapsed())
                    * self.rollback.lr_factor
                    * self.hooks.lr_factor
                )
                loss_sum = 0.0
                for _ in range(cfg.optim.grad_accum):
                    ids, targets, spike = self.rollback.next_batch()
                    loss = self.model.loss(ids, targets, **doc_masks(self.rollback.belt, cfg.data.doc_mask))
                    loss.backward(seed if spike == 1.0 else _core.Tensor.full([], spike / micro))
                    loss_sum += loss.item() * spike
                loss_sum = self.dist.exchange(self.opt.params, loss_sum, stop)  # MPI: rank-ordered sums over ranks
                gnorm = (
                    optim.clip_grad_norm(self.opt.params, cfg.optim.grad_clip)  # self.opt: a curriculum may grow
                    if cfg.optim.grad_clip > 0
                    else optim.grad_norm(self.opt.params)
                )
                anomaly = self.rollback.observe(self.step, loss_sum / cfg.optim.grad_accum, gnorm)
                if anomaly is not None:
                    self._roll_back(anomaly, loss_sum / cfg.optim.grad_accum, metrics, timer)
                    window_t, window_steps = time.perf_counter(), 0
                    continue
                self.opt.step(lr)
                self.opt.zero_grad()
                self.step += 1
                self.rollback.after_step(self.step)
                self.hooks.after_step(ids, metrics)  # governor readings/actions, stage changes
                window_steps += 1
                elapsed = self.elapsed_before + timer.elapsed()
                show = self.step % run.log_every == 0 or self.step == run.steps
                if show:
                    dt = time.perf_counter() - window_t
                    ms = 1000 * dt / max(window_steps, 1)
                    record = {
                        "step": self.step,
                        "loss": loss_sum / cfg.optim.grad_accum,
                        "lr": lr,
                        "grad_norm": gnorm,
                        "tokens_per_s": tokens_per_step * window_steps / max(dt, 1e-9),
                        "ms_per_step": ms,
                        "elapsed_s": elapsed,
                        "eta_s": ms / 1000 * (run.steps - self.step),
                        "rss_mb": rss_bytes() / 2**20,
                        "tokens_seen": self.hooks.tokens_seen(self.step, tokens_per_step),
                        **self.meter.fields(elapsed),
                    }
                    record.update(self.model.step_stats())  # the family's own numbers (routing, regularisers)
                    record.update(self.dist.step_stats())  # MPI: the step's all-reduce time and bytes
                    metrics.step(record, show=True)
                    window_t, window_steps = time.perf_counter(), 0
                paused = False
                due = run.eval_every and (self.step % run.eval_every == 0 or self.step == run.steps)
                if due and self.dist.is_root:
                    paused = True
                    v = self.validate()
                    last_val = v["val_loss"]
                    if self.best_val is None or last_val < self.best_val:
                        self.best_val = last_val
                    v["val_split"] = "val" if self.data.has_val else "train"
                    metrics.write({"step": self.step, **v, **self.meter.fields(elapsed)})
                    label = "val" if self.data.has_val else "train-split"  # see DataSetup.val_note
                    metrics.info(
                        f"step {self.step}: {label} loss {v['val_loss']:.4f} | {label} bits/byte {v['val_bpb']:.4f}"
                    )
                    result.update(v)
                if run.sample_every and self.step % run.sample_every == 0 and self.dist.is_root:
                    self._write_sample(metrics)
                    paused = True
                if self._out_of_time(timer):
                    metrics.info(f"time limit of {run.max_minutes} min reached at step {self.step}")
                    break
                if run.checkpoint_every and self.step % run.checkpoint_every == 0 and self.step < run.steps:
                    self.save(elapsed, last_val)
                    paused = True
                if paused:  # validation, samples and saves are not charged to throughput
                    window_t, window_steps = time.perf_counter(), 0
            folder = self.save(self.elapsed_before + timer.elapsed(), last_val)
            metrics.info(f"checkpoint {folder}")
            if stop["flag"]:
                metrics.info(f"interrupted at step {self.step}; resume with --resume auto")
            wall = self.elapsed_before + timer.elapsed()
            result.update(self.meter.fields(wall))
            result.update(
                step=self.step,
                tokens_seen=self.hooks.tokens_seen(self.step, tokens_per_step),
                elapsed_s=wall,
                peak_rss_mb=peak_rss_bytes() / 2**20,
                checkpoint=str(folder),
                interrupted=stop["flag"],
            )
            return result
        finally:
            signal.signal(signal.SIGINT, prev)
            metrics.close()
            self.lock.release()

    def _roll_back(self, reason: str, loss: float, metrics: MetricsLog, timer: Timer) -> None:
        """An anomalous step: back to the last good state (train/rollback.py), or stop with a
        checkpoint of it when rollback is off or rollback.max is spent."""
        rb = self.rollback
        if not self.cfg.rollback.enabled or rb.snapshot is None:
            raise TrainingError(f"{reason} at step {self.step}; lower optim.lr or check the data")
        if rb.exhausted:
            at = self.step
            rb.restore_last_good()
            self.step = rb.snapshot.step
            folder = self.save(self.elapsed_before + timer.elapsed(), None)
            raise TrainingError(
                f"{reason} at step {at}: rollback.max = {self.cfg.rollback.max} rollbacks are spent; "
                f"the run stops with the last good state (step {rb.snapshot.step}) in {folder}"
            )
        event = rb.restore(self.step, reason, loss)
        self.step = event["restored_step"]
        metrics.write(event)
        metrics.info(
            f"rollback {event['rollbacks']}/{self.cfg.rollback.max} at step {event['step']}: {reason} "
            f"(loss {loss:.4g}); restored step {event['restored_step']}, skipped micro-batches "
            f"{event['skipped_batches'][0]}..{event['skipped_batches'][1] - 1}, lr x{event['lr_factor']:g}"
        )

    def _write_sample_final(self) -> str:
        text = self.sample_text(self.cfg.run.sample_tokens)
        with open(self.out / "samples.txt", "a") as f:
            f.write(f"=== step {self.step} (final) ===\n{text}\n\n")
        print(f"sample:\n{text}")
        return text

    def _write_sample(self, metrics: MetricsLog) -> str:
        text = self.sample_text(self.cfg.run.sample_tokens)
        with open(self.out / "samples.txt", "a") as f:
            f.write(f"=== step {self.step} ===\n{text}\n\n")
        metrics.info(f"sample at step {self.step}: {text[:200]!r}")
        return text
