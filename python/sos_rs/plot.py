"""`sos plot RUN`: a PNG of training loss (and validation loss), learning rate and throughput."""

from __future__ import annotations

import pathlib

from .train.metrics import read_metrics


def plot_run(run: pathlib.Path, out: pathlib.Path) -> pathlib.Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    records = read_metrics(run / "metrics.jsonl")
    train = [r for r in records if "loss" in r]
    val = [r for r in records if "val_loss" in r]
    if not train:
        raise ValueError(f"{run / 'metrics.jsonl'} holds no training steps yet")
    fig, axes = plt.subplots(3, 1, figsize=(8, 9), sharex=True)
    axes[0].plot([r["step"] for r in train], [r["loss"] for r in train], label="train")
    if val:
        axes[0].plot([r["step"] for r in val], [r["val_loss"] for r in val], "o-", label="validation")
    axes[0].set_ylabel("loss (nats)")
    axes[0].legend()
    axes[1].plot([r["step"] for r in train], [r["lr"] for r in train])
    axes[1].set_ylabel("learning rate")
    axes[2].plot([r["step"] for r in train], [r["tokens_per_s"] for r in train])
    axes[2].set_ylabel("tokens / s")
    axes[2].set_xlabel("step")
    fig.suptitle(str(run))
    fig.tight_layout()
    fig.savefig(out, dpi=100)
    plt.close(fig)
    return out
