"""Data-parallel training over MPI (SPEC §10): `mpirun -np N sos train CONFIG.toml`.

- launch.py: who started this process (mpirun, srun, mpiexec) from the environment alone;
- cores.py: each rank's share of its node's cores, set before the thread pool starts;
- reduce.py: the deterministic, bucketed all-reduce of one flat f32 gradient buffer;
- context.py: `Single` (one process, as before) and `Mpi`, the calls the trainer makes.

mpi4py is optional (`pip install 'sos_rs[mpi]'`); it is imported only when a launcher started
more than one rank.
"""

from __future__ import annotations

from typing import Callable, Optional, Union

from .context import DistError, Mpi, NullMetrics, Single
from .launch import Launch, detect

__all__ = ["DistError", "Launch", "Mpi", "NullMetrics", "Single", "active", "detect", "setup"]

_ACTIVE: Optional[Union[Single, Mpi]] = None


def _start_mpi(launch: Launch):
    try:
        import mpi4py
    except ImportError:
        raise DistError(
            f"sos train was started as rank {launch.rank} of {launch.world} by {launch.launcher} "
            f"({launch.variable}={launch.world}) but mpi4py is not installed, so the ranks cannot talk "
            "to each other. Install it with `pip install 'sos_rs[mpi]'` (it needs an MPI library, e.g. "
            "Debian's openmpi-bin and libopenmpi-dev), or run one process without the launcher"
        ) from None
    mpi4py.rc.thread_level = "funneled"  # MPI is called from the main thread only
    from mpi4py import MPI

    return MPI.COMM_WORLD


def setup(log: Callable[[str], None] = print, pin: bool = True) -> Union[Single, Mpi]:
    """The process group of this run (cached): `Single()` unless a launcher started several
    ranks. Under MPI this rank's cores are narrowed to its share of the node (unless `pin` is
    False); call it before anything starts the Rust thread pool."""
    global _ACTIVE
    if _ACTIVE is not None:
        return _ACTIVE
    launch = detect()
    if launch is None:
        _ACTIVE = Single()
        return _ACTIVE
    comm = _start_mpi(launch)
    if comm.Get_size() != launch.world:
        raise DistError(
            f"{launch.launcher} announced {launch.world} ranks ({launch.variable}) but MPI_COMM_WORLD has "
            f"{comm.Get_size()}: mpi4py is built against another MPI than the launcher's"
        )
    ctx = Mpi(launch, comm)
    if pin:
        ctx.pin_cores(log)
    _ACTIVE = ctx
    return ctx


def active() -> Optional[Union[Single, Mpi]]:
    """The process group `setup` made, or None before it ran."""
    return _ACTIVE
