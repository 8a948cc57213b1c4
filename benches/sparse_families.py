"""Training tokens/s (forward + backward + AdamW step) of the tiny MoA and DiscoverLM presets:
sos_rs against their PyTorch reference (python/sos_rs/hf/modeling_sos_moa.py), same process,
same threads, same weights, same batches and regulariser triples.

    python -m benches.sparse_families [--batch 8] [--seq 64] [--steps 10] [--families moa discoverlm]

Prints the median step time of --steps timed steps (after 3 warm-ups; the two implementations
alternate in blocks), tokens/s, the ratio, the
measured active-parameter fraction and the TI violation rate.
"""

from __future__ import annotations

import argparse

import numpy as np

import sos_rs
from benches.timing import interleaved_medians
from sos_rs import optim
from sos_rs.models import FAMILIES


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--seq", type=int, default=64)
    ap.add_argument("--steps", type=int, default=12)
    ap.add_argument("--families", nargs="+", default=["moa", "discoverlm"])
    ap.add_argument("--threads", type=int, default=0, help="threads of both libraries (0: sos_rs default)")
    args = ap.parse_args()
    import torch

    from sos_rs.hf import modeling_sos_moa as R

    hf = {
        "moa": (R.SosMoAConfig, R.SosMoAForCausalLM),
        "discoverlm": (R.SosDiscoverLMConfig, R.SosDiscoverLMForCausalLM),
    }
    if args.threads:
        sos_rs.set_num_threads(args.threads)
    torch.set_num_threads(sos_rs.num_threads())
    print(
        f"tiny presets, batch {args.batch}x{args.seq}; threads {sos_rs.num_threads()}, isa {sos_rs.isa()}, torch "
        f"{torch.__version__}"
    )
    for family in args.families:
        model_cls = FAMILIES[family]
        cfg_cls = model_cls.config_class
        cfg = cfg_cls.tiny(max_seq_len=max(64, args.seq))
        model = model_cls(cfg)
        seq = np.random.default_rng(0).integers(0, cfg.vocab_size, (args.batch, args.seq + 1))
        ids, targets = seq[:, :-1], seq[:, 1:]
        triples = [model.sample_triples(ids.size) for _ in range(4)]
        opt = optim.AdamW(model.parameters(), lr=1e-3, weight_decay=0.1)
        it = iter(range(10**9))

        def sos_step():
            opt.zero_grad()
            model.loss(ids, targets, triples[next(it) % 4]).backward()
            opt.step()

        hcfg, hcls = hf[family]
        ref = hcls(hcfg(**cfg.to_dict()))
        ref.load_state_dict({k: torch.from_numpy(v.copy()) for k, v in model.state_dict().items()})
        ref.train()
        topt = torch.optim.AdamW(ref.parameters(), lr=1e-3, weight_decay=0.1)
        tids, ttargets = torch.from_numpy(ids), torch.from_numpy(targets)
        jt = iter(range(10**9))

        def torch_step():
            topt.zero_grad()
            ref(tids, labels=ttargets, triples=triples[next(jt) % 4], return_aux=True)[1].backward()
            topt.step()

        t_sos, t_ref = interleaved_medians([sos_step, torch_step], args.steps, warmup=3)
        stats = dict(model.last_stats)
        tokens = ids.size
        print(
            f"{family:10s} params {model.num_parameters():8d}: sos_rs {1e3 * t_sos:7.1f} ms ({tokens / t_sos:8.0f} "
            f"tok/s)   "
            f"torch reference {1e3 * t_ref:7.1f} ms ({tokens / t_ref:8.0f} tok/s)   speed-up {t_ref / t_sos:5.2f}x   "
            f"active params/token {100 * stats['active_param_fraction']:.1f}%   TI violation rate "
            f"{stats['ti_violation_rate']:.3f}"
        )


if __name__ == "__main__":
    main()
