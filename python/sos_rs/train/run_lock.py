"""The run-folder lock: one `sos train` per run folder. RUN/.lock is held with flock(2) for the
life of the trainer and names its holder (pid, host, start time); a second trainer on the same
folder is refused with that name. The kernel drops a flock when its process dies, so a lock file
left by a killed run is simply taken over, with a note naming the dead holder."""

from __future__ import annotations

import datetime
import fcntl
import json
import os
import pathlib
import socket
from typing import Callable, Optional


class RunLockedError(RuntimeError):
    """Another process trains in this run folder; the message names it."""


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _describe(holder: dict) -> str:
    return f"pid {holder.get('pid')} on {holder.get('host')} since {holder.get('started')}"


class RunLock:
    """`RunLock(run_folder).acquire(log)`; `release()` (or process exit) frees it."""

    def __init__(self, run: pathlib.Path):
        self.path = pathlib.Path(run) / ".lock"
        self.fd: Optional[int] = None

    def acquire(self, log: Callable[[str], None] = print) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = self._read(fd)
            os.close(fd)
            raise RunLockedError(
                f"{self.path.parent} is in use by another sos train ({_describe(holder)}); "
                "wait for it to finish, stop it, or choose another run.out"
            ) from None
        previous = self._read(fd)
        if previous.get("pid") is not None and previous.get("pid") != os.getpid():
            host = previous.get("host")
            dead = host == socket.gethostname() and isinstance(previous["pid"], int) and not _alive(previous["pid"])
            state = "no longer running" if dead else "its lock was released"
            log(f"note: taking over the lock of {self.path.parent} from {_describe(previous)} ({state})")
        me = {
            "pid": os.getpid(),
            "host": socket.gethostname(),
            "started": datetime.datetime.now().astimezone().isoformat(timespec="seconds"),
        }
        os.ftruncate(fd, 0)
        os.pwrite(fd, (json.dumps(me) + "\n").encode(), 0)
        os.fsync(fd)
        self.fd = fd

    @staticmethod
    def _read(fd: int) -> dict:
        try:
            data = os.pread(fd, 4096, 0)
            holder = json.loads(data.decode("utf-8")) if data.strip() else {}
            return holder if isinstance(holder, dict) else {}
        except (OSError, ValueError):
            return {"pid": "?", "host": "?", "started": "?"}

    def release(self) -> None:
        if self.fd is not None:
            try:
                os.ftruncate(self.fd, 0)
                fcntl.flock(self.fd, fcntl.LOCK_UN)
            finally:
                os.close(self.fd)
                self.fd = None

    def __del__(self) -> None:  # pragma: no cover - a trainer dropped without release()
        self.release()
