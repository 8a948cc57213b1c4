"""The training loop behind `sos train`: build the model and data from a TrainConfig, resume from
the newest valid checkpoint, train with AdamW, a schedule, accumulation and clipping, and log,
validate, sample and checkpoint as configured. Ctrl-C stops after the current step with a
checkpoint; SIGKILL loses at most the steps since the last checkpoint, and resuming reproduces
the uninterrupted run bit for bit (data cursor, optimizer state and step are all restored)."""

from __future__ import annotations

import dataclasses
import json
import math
import os
import pathlib
import platform
import signal
import time
from typing import Optional

import numpy as np

import sos_rs

from .. import _core, optim
from ..models import build_model
from . import checkpoint as ckpt
from .config import TrainConfig, dumps
from .cost import CostMeter
from .data_setup import DataSetup
from .evaluate import evaluate
from .memory import available_bytes, peak_rss_bytes, rss_bytes
from .metrics import MetricsLog, Timer, read_metrics
from .schedule import lr_at


class TrainingError(RuntimeError):
    """Training cannot start or continue; the message says why."""


def model_config(cfg: TrainConfig, vocab_size: int) -> dict:
    m = {k: v for k, v in cfg.model.items() if k != "family"}
    given = m.get("vocab_size", "auto")
    if given in ("auto", None):
        m["vocab_size"] = vocab_size
    elif int(given) != vocab_size:
        raise TrainingError(
            f"vocabulary mismatch: [model] vocab_size = {given} but the tokenizer and shards have {vocab_size}"
        )
    m.setdefault("max_seq_len", cfg.data.seq_len)
    if m["max_seq_len"] < cfg.data.seq_len:
        raise TrainingError(
            f"[model] max_seq_len = {m['max_seq_len']} is shorter than data.seq_len = {cfg.data.seq_len}"
        )
    m.setdefault("seed", cfg.run.seed)
    return m


def optimizer_arrays(opt: optim.AdamW, names: list) -> dict:
    out = {}
    for name, m, v in zip(names, opt.m, opt.v):
        out[f"m.{name}"] = m.numpy()
        out[f"v.{name}"] = v.numpy()
    return out


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
        self.log = log
        if cfg.run.threads:
            sos_rs.set_num_threads(cfg.run.threads)
        self.data = DataSetup(cfg)
        mcfg = model_config(cfg, self.data.vocab_size)
        self.family = cfg.model.get("family", "dense")
        self.model = build_model(self.family, mcfg)
        self.model_cfg = dataclasses.asdict(self.model.config)
        self.names = [n for n, _ in self.model.named_parameters()]
        o = cfg.optim
        self.opt = optim.AdamW(self.model.parameters(), lr=o.lr, betas=o.betas, eps=o.eps, weight_decay=o.weight_decay)
        self.step = 0
        self.best_val: Optional[float] = None
        self.elapsed_before = 0.0
        self.cpu_before = 0.0
        self.meter = CostMeter(cfg.run.price_per_hour)
        self.train_belt = self.data.train_belt()
        self._check_memory()
        self._resume(resume)

    # ---- set-up -------------------------------------------------------------------------------
    def _check_memory(self) -> None:
        n = self.model.num_parameters()
        est = self.model.estimate_memory(self.cfg.data.batch_size, self.cfg.data.seq_len).as_dict()
        avail = available_bytes()
        self.log(
            f"model: {self.family}, {n / 1e6:.2f}M parameters | estimated memory {est['total'] / 2**20:.0f} MiB "
            f"(weights+optimizer {est['weights_and_optimizer'] / 2**20:.0f} MiB, "
            f"activations {est['activations'] / 2**20:.0f} MiB), "
            f"available {avail / 2**20:.0f} MiB"
        )
        if est["total"] > avail:
            raise TrainingError(
                f"the run needs about {est['total'] / 2**30:.1f} GiB but only {avail / 2**30:.1f} GiB is available; "
                "reduce data.batch_size, data.seq_len or the model size"
            )

    def _resume(self, resume: str) -> None:
        root = self.out / "checkpoints"
        if resume in ("none", "no", ""):
            if ckpt.list_steps(root):
                raise TrainingError(
                    f"{root} already holds checkpoints; use --resume auto to continue or choose another run.out"
                )
            return
        folder = ckpt.latest_valid(root, log=self.log) if resume == "auto" else pathlib.Path(resume)
        if folder is None:
            return
        model_arrays, opt_arrays, state = ckpt.load(folder)
        if state.get("model_family") != self.family or state.get("model_config") != self.model_cfg:
            raise TrainingError(
                f"{folder} was written for a different model "
                f"({state.get('model_family')}, {state.get('model_config')}); "
                "the config must match to resume"
            )
        self.model.load_state_dict(model_arrays)
        load_optimizer(self.opt, self.names, opt_arrays, state["optimizer_step"])
        self.train_belt.load_state(state["belt"])
        self.step = state["step"]
        self.best_val = state.get("best_val_loss")
        self.elapsed_before = state.get("elapsed_s", 0.0)
        self.cpu_before = state.get("cpu_s", 0.0)
        self._truncate_metrics()
        self.log(f"resumed from {folder} at step {self.step}")

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
        state = {
            "model_family": self.family,
            "model_config": self.model_cfg,
            "train_config": self.cfg.to_dict(),
            "optimizer_step": self.opt.step_count,
            "belt": self.train_belt.state(),
            "rng": {
                "seed": self.cfg.run.seed,
                "note": "sampling seeds derive from (seed, step); no other RNG is consumed",
            },
            "curriculum": None,
            "val_loss": val_loss,
            "best_val_loss": self.best_val,
            "elapsed_s": elapsed,
            **self.meter.fields(elapsed),
            "versions": {"sos_rs": sos_rs.__version__, "python": platform.python_version(), "numpy": np.__version__},
            "tokenizer": str(self.data.tokenizer_path),
            "eot_id": self.data.eot_id,
        }
        folder = ckpt.save(
            self.out / "checkpoints", self.step, self.model.state_dict(), optimizer_arrays(self.opt, self.names), state
        )
        ckpt.prune(self.out / "checkpoints", self.cfg.run.keep_last)
        return folder

    # ---- the loop ------------------------------------------------------------------------------
    def lr(self, step: int) -> float:
        o, s = self.cfg.optim, self.cfg.schedule
        return lr_at(step, self.cfg.run.steps, o.lr, o.min_lr, s.kind, s.warmup_steps, s.decay_fraction)

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
        self.out.mkdir(parents=True, exist_ok=True)
        (self.out / "config.json").write_text(dumps(cfg))
        metrics = MetricsLog(self.out / "metrics.jsonl", run.steps, self.step)
        metrics.info(f"threads {sos_rs.num_threads()} | SIMD {sos_rs.isa()} | {self.data.describe()}")
        stop = {"flag": False}
        prev = signal.signal(signal.SIGINT, lambda *_: stop.update(flag=True))
        timer = Timer()
        self.meter = CostMeter(run.price_per_hour, self.elapsed_before, self.cpu_before)
        tokens_per_step = cfg.data.batch_size * cfg.data.seq_len * cfg.optim.grad_accum
        params = self.model.parameters()
        seed = _core.Tensor.full([], 1.0 / cfg.optim.grad_accum)
        last_val: Optional[float] = None
        window_t, window_steps = time.perf_counter(), 0
        result = {}
        try:
            while self.step < run.steps and not stop["flag"]:
                lr = self.lr(self.step)
                loss_sum = 0.0
                for _ in range(cfg.optim.grad_accum):
                    ids, targets = self.train_belt.next_batch()
                    loss = self.model.loss(ids, targets)
                    loss.backward(seed)
                    loss_sum += loss.item()
                gnorm = (
                    optim.clip_grad_norm(params, cfg.optim.grad_clip)
                    if cfg.optim.grad_clip > 0
                    else optim.grad_norm(params)
                )
                if not math.isfinite(gnorm):
                    raise TrainingError(
                        f"non-finite gradient norm at step {self.step}; lower optim.lr or check the data"
                    )
                self.opt.step(lr)
                self.opt.zero_grad()
                self.step += 1
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
                        "tokens_seen": self.step * tokens_per_step,
                        **self.meter.fields(elapsed),
                    }
                    record.update(self.model.step_stats())  # the family's own numbers (routing, regularisers)
                    metrics.step(record, show=True)
                    window_t, window_steps = time.perf_counter(), 0
                paused = False
                if run.eval_every and (self.step % run.eval_every == 0 or self.step == run.steps):
                    paused = True
                    v = self.validate()
                    last_val = v["val_loss"]
                    if self.best_val is None or last_val < self.best_val:
                        self.best_val = last_val
                    metrics.write({"step": self.step, **v, **self.meter.fields(elapsed)})
                    metrics.info(f"step {self.step}: val loss {v['val_loss']:.4f} | val bits/byte {v['val_bpb']:.4f}")
                    result.update(v)
                if run.sample_every and self.step % run.sample_every == 0:
                    self._write_sample(metrics)
                    paused = True
                if run.max_minutes and timer.elapsed() > run.max_minutes * 60:
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
                tokens_seen=self.step * tokens_per_step,
                elapsed_s=wall,
                peak_rss_mb=peak_rss_bytes() / 2**20,
                checkpoint=str(folder),
                interrupted=stop["flag"],
            )
            return result
        finally:
            signal.signal(signal.SIGINT, prev)
            metrics.close()

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
