"""Who launched this process, from the launcher's environment alone (no MPI call): world size,
rank, and the rank's place among the ranks of its node. Read before MPI starts, so a run launched
by mpirun or srun without mpi4py installed is refused with a clear message instead of running N
independent copies that overwrite each other's run folder."""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Mapping, Optional

# (launcher, world size, rank, local rank, local size): the variables each launcher sets in every
# rank. Slurm's SLURM_STEP_NUM_TASKS is set by `srun` only, not in a batch script, so a plain
# command in an `sbatch --ntasks=4` script is one process, as it is.
LAUNCHERS = (
    (
        "OpenMPI mpirun",
        "OMPI_COMM_WORLD_SIZE",
        "OMPI_COMM_WORLD_RANK",
        "OMPI_COMM_WORLD_LOCAL_RANK",
        "OMPI_COMM_WORLD_LOCAL_SIZE",
    ),
    ("Slurm srun", "SLURM_STEP_NUM_TASKS", "SLURM_PROCID", "SLURM_LOCALID", "SLURM_STEP_TASKS_PER_NODE"),
    ("MPICH/Hydra mpiexec", "PMI_SIZE", "PMI_RANK", "MPI_LOCALRANKID", "MPI_LOCALNRANKS"),
)


@dataclass(frozen=True)
class Launch:
    """This process's place in the job, as the launcher announced it."""

    launcher: str
    world: int
    rank: int
    local_rank: int
    local_size: int
    variable: str
    """The environment variable that gave the world size (quoted in messages)."""


def _int(text: Optional[str], default: int) -> int:
    """The leading integer of `text` ("4(x2)" in Slurm's tasks-per-node gives 4), else `default`."""
    digits = ""
    for ch in (text or "").strip():
        if not ch.isdigit():
            break
        digits += ch
    return int(digits) if digits else default


def detect(env: Optional[Mapping[str, str]] = None) -> Optional[Launch]:
    """The launch of this process when a launcher started more than one rank, else None."""
    env = os.environ if env is None else env
    for name, size_key, rank_key, local_rank_key, local_size_key in LAUNCHERS:
        world = _int(env.get(size_key), 0)
        if world > 1:
            rank = _int(env.get(rank_key), 0)
            local_rank = _int(env.get(local_rank_key), rank)
            local_size = _int(env.get(local_size_key), world)
            return Launch(name, world, rank, local_rank, max(local_size, local_rank + 1), size_key)
    return None
