"""`sos info`: the engine's version, instruction set and threads."""

from __future__ import annotations

import sos_rs


def add_parser(sub) -> None:
    p = sub.add_parser("info", help="show the engine version, SIMD path and thread count")
    p.set_defaults(func=run)


def run(args) -> int:
    print(f"sos_rs {sos_rs.__version__}")
    print(f"instruction set: {sos_rs.isa()} (CPU supports {sos_rs.detected_isa()}; SOS_ISA lowers it)")
    print(f"threads: {sos_rs.num_threads()} (SOS_NUM_THREADS or sos_rs.set_num_threads)")
    print(f"pools: {sos_rs.thread_info()}")
    return 0
