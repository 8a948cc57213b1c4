"""SAGI benchmarks: training tokens/s (forward + backward + AdamW) of the tiny preset, sos_rs
against its PyTorch reference (python/sos_rs/hf/modeling_sos_sagi.py) in the same process, same
threads, weights and batch; then the published preset's step time, memory (estimate and peak RSS
growth) and the measured active-parameter fraction of each preset.

    python -m benches.sagi [--batch 8] [--seq 64] [--steps 10] [--preset-batch 4] [--preset-seq 256]

Timings on a shared machine are indicative; nothing here is a pass/fail test.
"""

from __future__ import annotations

import argparse
import time

import numpy as np

import sos_rs
from benches.timing import interleaved_medians
from sos_rs import optim
from sos_rs.models import SAGILM, SAGIConfig
from sos_rs.train.memory import peak_rss_bytes


def sos_step(model: SAGILM, opt: optim.AdamW, ids: np.ndarray, targets: np.ndarray) -> None:
    opt.zero_grad()
    model.loss(ids, targets).backward()
    optim.clip_grad_norm(model.parameters(), 1.0)
    opt.step()


def active_fraction(cfg: SAGIConfig, batch: int, seq: int) -> dict:
    """The step statistics of one training pass of a fresh model on random tokens."""
    model = SAGILM(cfg)
    seq_ids = np.random.default_rng(0).integers(0, cfg.vocab_size, (batch, seq + 1))
    model.loss(seq_ids[:, :-1], seq_ids[:, 1:])
    return {"params": model.num_parameters(), **model.step_stats()}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--seq", type=int, default=64)
    ap.add_argument("--steps", type=int, default=10)
    ap.add_argument("--preset-batch", type=int, default=4)
    ap.add_argument("--preset-seq", type=int, default=256)
    ap.add_argument("--preset-steps", type=int, default=2)
    ap.add_argument("--threads", type=int, default=0, help="threads of both libraries (0: sos_rs default)")
    args = ap.parse_args()
    import torch

    from sos_rs.hf import modeling_sos_sagi as R

    if args.threads:
        sos_rs.set_num_threads(args.threads)
    torch.set_num_threads(sos_rs.num_threads())
    print(f"threads {sos_rs.num_threads()}, isa {sos_rs.isa()}, torch {torch.__version__}")

    cfg = SAGIConfig.tiny(max_seq_len=max(64, args.seq))
    model = SAGILM(cfg)
    ref = R.SosSAGIForCausalLM(R.SosSAGIConfig(**cfg.to_dict()))
    ref.load_state_dict({k: torch.from_numpy(v.copy()) for k, v in model.state_dict().items()})
    ref.train()
    seq = np.random.default_rng(0).integers(0, cfg.vocab_size, (args.batch, args.seq + 1))
    ids, targets = seq[:, :-1], seq[:, 1:]
    tids, ttargets = torch.from_numpy(ids), torch.from_numpy(targets)
    opt = optim.AdamW(model.parameters(), lr=1e-3, betas=(0.9, 0.95), weight_decay=0.1)
    topt = torch.optim.AdamW(ref.parameters(), lr=1e-3, betas=(0.9, 0.95), weight_decay=0.1)

    def torch_step() -> None:
        topt.zero_grad()
        ref(tids, labels=ttargets).loss.backward()
        torch.nn.utils.clip_grad_norm_(ref.parameters(), 1.0)
        topt.step()

    t_sos, t_torch = interleaved_medians([lambda: sos_step(model, opt, ids, targets), torch_step], args.steps)
    tokens = args.batch * args.seq
    print(f"\n| tiny SAGI, batch {args.batch}x{args.seq} | ms/step | tokens/s |")
    print("|---|---|---|")
    print(f"| sos_rs | {1000 * t_sos:.1f} | {tokens / t_sos:,.0f} |")
    print(f"| PyTorch reference | {1000 * t_torch:.1f} | {tokens / t_torch:,.0f} |")
    print(f"| ratio (sos_rs / PyTorch) | | {t_torch / t_sos:.2f}x |")

    preset = SAGIConfig(max_seq_len=max(args.preset_seq, 64))
    rss0 = peak_rss_bytes()
    big = SAGILM(preset)
    est = big.estimate_memory(args.preset_batch, args.preset_seq)
    bopt = optim.AdamW(big.parameters(), lr=1e-4)
    pseq = np.random.default_rng(1).integers(0, preset.vocab_size, (args.preset_batch, args.preset_seq + 1))
    sos_step(big, bopt, pseq[:, :-1], pseq[:, 1:])  # warm-up (allocates the moments)
    times = []
    for _ in range(args.preset_steps):
        t0 = time.perf_counter()
        sos_step(big, bopt, pseq[:, :-1], pseq[:, 1:])
        times.append(time.perf_counter() - t0)
    ms = 1000 * float(np.median(times))
    print(f"\n| preset (d 512, 6 layers, 20 agents), batch {args.preset_batch}x{args.preset_seq} | value |")
    print("|---|---|")
    print(f"| parameters | {big.num_parameters() / 1e6:.2f}M |")
    print(f"| step time (fwd+bwd+AdamW) | {ms:.0f} ms ({args.preset_batch * args.preset_seq / ms * 1000:,.0f} tok/s) |")
    print(f"| estimated memory | {est.total / 2**20:.0f} MiB |")
    print(f"| peak RSS growth | {(peak_rss_bytes() - rss0) / 2**20:.0f} MiB |")

    print("\n| preset | params | agents/token | thought rounds | compute/token/layer | active-param fraction |")
    print("|---|---|---|---|---|---|")
    for name, c in (("tiny", SAGIConfig.tiny()), ("published (d 512)", SAGIConfig(max_seq_len=256))):
        s = active_fraction(c, 2, 64)
        print(
            f"| {name} | {s['params'] / 1e6:.2f}M | {s['agents_per_token']:.2f} | {s['thought_rounds']:.2f} | "
            f"{s['compute_per_token']:.2f} | {100 * s['active_param_fraction']:.1f}% |"
        )


if __name__ == "__main__":
    main()
