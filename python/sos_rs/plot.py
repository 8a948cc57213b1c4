"""`sos plot RUN`: a PNG of training loss (and validation loss), learning rate and throughput;
with a curriculum, shaded bands named by stage on every panel; with the governor, panels of T
per layer (activations) and per router, and of the router temperatures τ."""

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
    gov = [r for r in records if "governor" in r]
    panels = 3 + (3 if gov else 0)
    fig, axes = plt.subplots(panels, 1, figsize=(8, 3 * panels), sharex=True)
    axes[0].plot([r["step"] for r in train], [r["loss"] for r in train], label="train")
    if val:
        axes[0].plot([r["step"] for r in val], [r["val_loss"] for r in val], "o-", label="validation")
    axes[0].set_ylabel("loss (nats)")
    axes[0].legend()
    axes[1].plot([r["step"] for r in train], [r["lr"] for r in train])
    axes[1].set_ylabel("learning rate")
    axes[2].plot([r["step"] for r in train], [r["tokens_per_s"] for r in train])
    axes[2].set_ylabel("tokens / s")
    if gov:
        _governor_panels(axes[3:], gov)
    _stage_bands(axes, records, train[-1]["step"])
    axes[-1].set_xlabel("step")
    fig.suptitle(str(run))
    fig.tight_layout()
    fig.savefig(out, dpi=100)
    plt.close(fig)
    return out


def _governor_panels(axes, gov: list) -> None:
    steps = [r["step"] for r in gov]
    names = sorted({k for r in gov for k in r["governor"]})
    for k in names:
        ax = axes[0] if k.startswith("act.") else axes[1]
        ax.plot(steps, [r["governor"].get(k, float("nan")) for r in gov], label=k.split(".", 1)[1])
    taus = sorted({k for r in gov for k in r.get("governor_tau", {})})
    for k in taus:
        axes[2].plot(steps, [r["governor_tau"].get(k, float("nan")) for r in gov], label=k)
    for ax, label in zip(axes, ("T, activations", "T, routers", "router τ")):
        ax.set_ylabel(label)
        if label != "router τ":
            ax.set_yscale("log")
        if ax.lines:
            ax.legend(fontsize=6, ncol=2)


def _stage_bands(axes, records: list, last_step: int) -> None:
    """Shaded, named bands for the curriculum's stages (from its `stage` events)."""
    starts = [(0, None)] + [(r["step"], r["name"]) for r in records if r.get("event") == "stage"]
    if len(starts) == 1:
        return
    first = next((r for r in records if r.get("stage") is not None and "stage_val_loss" in r), None)
    starts[0] = (0, first["stage"] if first else "stage 0")
    for i, (begin, name) in enumerate(starts):
        end = starts[i + 1][0] if i + 1 < len(starts) else last_step
        for ax in axes:
            ax.axvspan(begin, end, alpha=0.08 if i % 2 else 0.16, color="tab:blue")
        axes[0].text(
            (begin + end) / 2,
            0.95,
            str(name),
            transform=axes[0].get_xaxis_transform(),
            ha="center",
            va="top",
            fontsize=8,
        )
