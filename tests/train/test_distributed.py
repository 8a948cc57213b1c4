"""Data-parallel training over MPI (python/sos_rs/dist/): launcher detection, per-rank cores and the
missing-mpi4py message run everywhere; the runs under `mpirun` (N ranks bit-identical to one
process with grad_accum = N and from run to run, rank 0 alone writes, mismatched ranks refused,
a SIGKILLed rank stops the job naming it and `--resume auto` continues bit-identically, resuming
with another rank count) skip with the reason where mpirun or mpi4py is missing."""

from __future__ import annotations

import json
import os
import pathlib
import shutil
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
from safetensors.numpy import load_file

from sos_rs.dist import cores
from sos_rs.dist.launch import detect
from tests.train.test_trainer import SOS, corpus, write_config  # noqa: F401 (corpus is a fixture)


def _mpi_missing() -> str:
    if shutil.which("mpirun") is None:
        return "mpirun not found (Debian: apt-get install openmpi-bin libopenmpi-dev)"
    try:
        import mpi4py  # noqa: F401
    except ImportError:
        return "mpi4py not installed (pip install 'sos_rs[mpi]')"
    return ""


needs_mpi = pytest.mark.skipif(bool(_mpi_missing()), reason=_mpi_missing() or "MPI available")
MPIRUN = ["mpirun", "--oversubscribe", "--bind-to", "none", "--mca", "btl", "self,vader,tcp"]
if hasattr(os, "geteuid") and os.geteuid() == 0:
    MPIRUN.insert(1, "--allow-run-as-root")


def mpirun(np_: int, *args: str, env=None, timeout=300) -> subprocess.CompletedProcess:
    cmd = MPIRUN + ["-np", str(np_)] + SOS + list(args)
    return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=env)


def weights(run: pathlib.Path, step: int, name: str = "model") -> dict:
    return load_file(str(run / "checkpoints" / f"step-{step:08d}" / f"{name}.safetensors"))


def same_bits(a: dict, b: dict) -> bool:
    return a.keys() == b.keys() and all(np.array_equal(a[k].view(np.uint32), b[k].view(np.uint32)) for k in a)


# ---- without MPI ---------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "env, want",
    [
        ({}, None),
        ({"OMPI_COMM_WORLD_SIZE": "1", "OMPI_COMM_WORLD_RANK": "0"}, None),  # mpirun -np 1: one process
        (
            {"OMPI_COMM_WORLD_SIZE": "4", "OMPI_COMM_WORLD_RANK": "3", "OMPI_COMM_WORLD_LOCAL_RANK": "1"},
            ("OpenMPI mpirun", 4, 3, 1),
        ),
        (
            {
                "SLURM_STEP_NUM_TASKS": "8",
                "SLURM_PROCID": "5",
                "SLURM_LOCALID": "1",
                "SLURM_STEP_TASKS_PER_NODE": "4(x2)",
            },
            ("Slurm srun", 8, 5, 1),
        ),
        ({"SLURM_NTASKS": "8", "SLURM_PROCID": "0"}, None),  # a batch script, not srun: one process
        ({"PMI_SIZE": "2", "PMI_RANK": "1"}, ("MPICH/Hydra mpiexec", 2, 1, 1)),
    ],
)
def test_detect_launcher(env, want):
    got = detect(env)
    assert (None if got is None else (got.launcher, got.world, got.rank, got.local_rank)) == want


def fake_sysfs(root: pathlib.Path, siblings: dict, l3: dict) -> pathlib.Path:
    for cpu, sib in siblings.items():
        (root / f"cpu{cpu}/topology").mkdir(parents=True)
        (root / f"cpu{cpu}/topology/thread_siblings_list").write_text(sib)
        (root / f"cpu{cpu}/cache/index3").mkdir(parents=True)
        (root / f"cpu{cpu}/cache/index3/shared_cpu_list").write_text(l3[cpu])
    return root


def test_cores_split_by_physical_core_and_l3(tmp_path):
    # 4 cores × 2 SMT threads: core k = cpus {k, k+4}; L3 domains {0,1,4,5} and {2,3,6,7}
    sib = {c: f"{c % 4},{c % 4 + 4}" for c in range(8)}
    l3 = {c: "0-1,4-5" if c % 4 < 2 else "2-3,6-7" for c in range(8)}
    sys_cpu = fake_sysfs(tmp_path, sib, l3)
    everything = list(range(8))
    # two ranks sharing the node: one L3 domain each, siblings kept with their core
    assert cores.assign([everything, everything], 0, sys_cpu) == [0, 1, 4, 5]
    assert cores.assign([everything, everything], 1, sys_cpu) == [2, 3, 6, 7]
    # three ranks: 2 + 1 + 1 physical cores, disjoint, covering the node
    parts = [cores.assign([everything] * 3, r, sys_cpu) for r in range(3)]
    assert [len(p) for p in parts] == [4, 2, 2] and sorted(sum(parts, [])) == everything
    # ranks the launcher bound to distinct sets keep them
    assert cores.assign([[0, 4], [1, 5]], 1, sys_cpu) == [1, 5]
    assert cores.parse_cpu_list("0-2,5,7-8\n") == [0, 1, 2, 5, 7, 8]


def test_mpirun_without_mpi4py_is_refused_clearly(corpus, tmp_path):  # noqa: F811
    cfg = write_config(tmp_path / "c.toml", corpus, tmp_path / "run", steps=2)
    block = "import sys; sys.modules['mpi4py'] = None; from sos_rs.cli import main; sys.exit(main(sys.argv[1:]))"
    env = {**os.environ, "OMPI_COMM_WORLD_SIZE": "2", "OMPI_COMM_WORLD_RANK": "1"}
    out = subprocess.run([sys.executable, "-c", block, "train", str(cfg)], capture_output=True, text=True, env=env)
    assert out.returncode == 2, out.stderr
    assert "rank 1 of 2 by OpenMPI mpirun" in out.stderr and "mpi4py is not installed" in out.stderr
    assert "Traceback" not in out.stderr and not (tmp_path / "run").exists()


# ---- under mpirun -------------------------------------------------------------------------------
@needs_mpi
def test_ranks_equal_one_process_with_grad_accum_bit_for_bit(corpus, tmp_path):  # noqa: F811
    # 3 ranks: with 2, (g0 + g1) == (g1 + g0) and a wrong order could not fail the test
    one = write_config(tmp_path / "one.toml", corpus, tmp_path / "one", steps=6, checkpoint_every=0)
    one.write_text(one.read_text().replace("grad_accum = 2", "grad_accum = 3"))
    subprocess.run(SOS + ["train", str(one)], check=True, capture_output=True)
    runs = []
    for name in ("a", "b"):
        cfg = write_config(tmp_path / f"{name}.toml", corpus, tmp_path / name, steps=6, checkpoint_every=0)
        cfg.write_text(cfg.read_text().replace("grad_accum = 2", "grad_accum = 1"))
        env = {**os.environ, "SOS_DIST_BUCKET_MB": "0.004"}  # several buckets: the pipeline is exercised
        out = mpirun(3, "train", str(cfg), env=env)
        assert out.returncode == 0, out.stderr + out.stdout
        assert "data parallel: 3 ranks" in out.stdout and "bucket(s)" in out.stdout
        assert out.stdout.count("done:") == 1  # rank 0 alone reports
        runs.append(tmp_path / name)
    for name in ("model", "optimizer"):
        ref = weights(tmp_path / "one", 6, name)
        assert same_bits(weights(runs[0], 6, name), ref), f"{name}: 3 ranks != 1 process with grad_accum 3"
        assert same_bits(weights(runs[1], 6, name), weights(runs[0], 6, name)), f"{name}: run to run"
    # rank 0 alone writes: one metrics line per step, the same losses as the single process
    got = [json.loads(line) for line in (runs[0] / "metrics.jsonl").read_text().splitlines()]
    want = [json.loads(line) for line in (tmp_path / "one" / "metrics.jsonl").read_text().splitlines()]
    assert [r["loss"] for r in got if "loss" in r] == [r["loss"] for r in want if "loss" in r]
    assert [r["step"] for r in got if "loss" in r] == list(range(1, 7))
    assert all(r["allreduce_mb"] > 0 for r in got if "loss" in r)


@needs_mpi
def test_ranks_with_different_configs_are_refused(corpus, tmp_path):  # noqa: F811
    a = write_config(tmp_path / "a.toml", corpus, tmp_path / "run", steps=2)
    b = tmp_path / "b.toml"
    b.write_text(a.read_text().replace("lr = 3e-3", "lr = 1e-3"))
    cmd = MPIRUN + ["-np", "1"] + SOS + ["train", str(a), ":", "-np", "1"] + SOS + ["train", str(b)]
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    assert out.returncode != 0
    assert "different configs or data" in out.stderr and "rank 1" in out.stderr and "optim.lr" in out.stderr
    assert not list((tmp_path / "run").glob("checkpoints/step-*"))


def _rank_pid(tag: str, rank: int) -> int:
    """The pid of the process of `rank` whose environment carries SOS_TEST_TAG=tag."""
    for proc in pathlib.Path("/proc").iterdir():
        try:
            env = (proc / "environ").read_bytes().split(b"\0")
        except (OSError, ValueError):
            continue
        if f"SOS_TEST_TAG={tag}".encode() in env and f"OMPI_COMM_WORLD_RANK={rank}".encode() in env:
            return int(proc.name)
    return 0


@needs_mpi
def test_sigkill_of_a_rank_stops_the_job_and_resume_continues(corpus, tmp_path):  # noqa: F811
    def config(name):
        cfg = write_config(tmp_path / f"{name}.toml", corpus, tmp_path / name, steps=120, checkpoint_every=10)
        cfg.write_text(cfg.read_text().replace("grad_accum = 2", "grad_accum = 1"))
        return cfg

    ref = mpirun(2, "train", str(config("ref")))
    assert ref.returncode == 0, ref.stderr
    cfg, metrics = config("killed"), tmp_path / "killed" / "metrics.jsonl"
    env = {**os.environ, "SOS_TEST_TAG": str(tmp_path)}
    proc = subprocess.Popen(
        MPIRUN + ["-np", "2"] + SOS + ["train", str(cfg)],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env=env,
    )
    try:
        while proc.poll() is None and not (metrics.exists() and metrics.read_text().count('"loss"') >= 25):
            time.sleep(0.002)
        assert proc.poll() is None, "the run ended before it could be killed"
        pid = _rank_pid(str(tmp_path), 1)
        assert pid, "rank 1 not found"
        os.kill(pid, signal.SIGKILL)
        t0 = time.time()
        out, _ = proc.communicate(timeout=60)
        waited = time.time() - t0
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode != 0 and waited < 60
    assert "rank 1" in out and "signal 9" in out, out[-2000:]
    # the last checkpoint is intact; --resume auto continues to the uninterrupted run's bits
    from sos_rs.train import checkpoint as ckpt

    last = ckpt.list_steps(tmp_path / "killed" / "checkpoints")[-1]
    ckpt.load(last)
    again = mpirun(2, "train", str(cfg), "--resume", "auto")
    assert again.returncode == 0, again.stderr
    assert f"resumed from {last}" in again.stdout
    assert same_bits(weights(tmp_path / "killed", 120), weights(tmp_path / "ref", 120))


@needs_mpi
def test_resume_with_another_rank_count(corpus, tmp_path):  # noqa: F811
    cfg = write_config(tmp_path / "c.toml", corpus, tmp_path / "run", steps=4, checkpoint_every=0)
    cfg.write_text(cfg.read_text().replace("grad_accum = 2", "grad_accum = 1"))
    assert mpirun(2, "train", str(cfg)).returncode == 0
    state = json.loads((tmp_path / "run/checkpoints/step-00000004/state.json").read_text())
    assert state["ranks"] == 2
    out = subprocess.run(SOS + ["train", str(cfg), "--steps", "6"], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    assert "was written by 2 rank(s), resuming with 1" in out.stdout
    assert json.loads((tmp_path / "run/checkpoints/step-00000006/state.json").read_text())["belt"]["batches"] == 6
