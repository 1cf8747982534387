"""One training run per OUTPUT_DIR: a lock file held for the run's lifetime.

``OUTPUT_DIR/.train.lock`` is held with ``fcntl.flock`` (released by the kernel when the holder
dies, however it dies) and names its holder (pid, host, start time) as json. A second run on the
same folder stops at once with an error naming the holder; a lock file left by a dead process
(flock free) is taken over with a warning. With several processes only rank 0 takes the lock and
every rank learns the outcome, so all of them stop together.

Where ``flock`` is unavailable (Windows) or not shared between hosts (some network file systems)
the holder's pid is checked instead when it is on this host.
"""
from __future__ import annotations

import contextlib
import datetime
import json
import logging
import os
import socket
from typing import Iterator, Optional

from .comm import all_gather, get_rank

try:
    import fcntl
except ImportError:  # pragma: no cover - Windows
    fcntl = None

LOCK_NAME = ".train.lock"
logger = logging.getLogger("maskrcnn_benchmark.run_lock")


class OutputDirLockedError(RuntimeError):
    """Another (live) run holds the lock on the folder."""


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _describe(holder: dict) -> str:
    return (f"pid {holder.get('pid', '?')} on host {holder.get('host', '?')} "
            f"(started {holder.get('started', '?')})")


class OutputDirLock:
    """Exclusive lock on ``directory`` for one training run.

    Args:
        directory: the run's OUTPUT_DIR (created if missing).
        name: lock file name inside it.
    """

    def __init__(self, directory: str, name: str = LOCK_NAME):
        self.directory = directory
        self.path = os.path.join(directory, name)
        self._fd: Optional[int] = None

    def _read_holder(self) -> dict:
        try:
            with open(self.path, encoding="utf-8") as f:
                holder = json.load(f)
            return holder if isinstance(holder, dict) else {}
        except (OSError, ValueError):
            return {}

    def acquire(self) -> None:
        """Take the lock, or raise :class:`OutputDirLockedError` naming the live holder."""
        os.makedirs(self.directory, exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            previous = self._read_holder()
            if fcntl is not None:
                try:
                    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                except OSError:
                    raise OutputDirLockedError(
                        f"OUTPUT_DIR {self.directory} is in use by another training run: {_describe(previous)} "
                        f"holds {self.path}. Two runs on one folder overwrite each other's checkpoints; wait for "
                        f"it to finish or use another OUTPUT_DIR") from None
            here = socket.gethostname()
            pid = previous.get("pid")
            if previous and previous.get("host") == here and isinstance(pid, int) and pid != os.getpid() \
                    and fcntl is None and _pid_alive(pid):
                raise OutputDirLockedError(f"OUTPUT_DIR {self.directory} is in use by another training run: "
                                           f"{_describe(previous)} holds {self.path}")
            if previous:
                logger.warning("Taking over the stale lock %s of %s, which is no longer running", self.path,
                               _describe(previous))
            holder = {"pid": os.getpid(), "host": here,
                      "started": datetime.datetime.now().isoformat(timespec="seconds")}
            os.ftruncate(fd, 0)
            os.pwrite(fd, json.dumps(holder).encode(), 0)
            os.fsync(fd)
        except BaseException:
            os.close(fd)
            raise
        self._fd = fd

    def release(self) -> None:
        """Remove the lock file and release the lock (no-op when not held)."""
        if self._fd is None:
            return
        with contextlib.suppress(OSError):
            os.remove(self.path)
        os.close(self._fd)  # closing drops the flock
        self._fd = None

    def __enter__(self) -> "OutputDirLock":
        self.acquire()
        return self

    def __exit__(self, *exc) -> None:
        self.release()


@contextlib.contextmanager
def training_lock(directory: str, distributed: bool = False) -> Iterator[Optional[OutputDirLock]]:
    """Hold the lock on ``directory`` for the ``with`` body (rank 0 takes it; with ``distributed``
    every rank raises :class:`OutputDirLockedError` when rank 0 could not). On entry, once the
    lock is held, the temporary files of atomic writes that an earlier run left behind when it was
    killed are removed (:func:`~maskrcnn_benchmark.utils.io.remove_stale_temp_files`)."""
    if not directory:
        yield None
        return
    lock, error = None, None
    if get_rank() == 0:
        lock = OutputDirLock(directory)
        try:
            lock.acquire()
        except OutputDirLockedError as e:
            error, lock = str(e), None
    if distributed:
        error = all_gather(error)[0]
    if error is not None:
        raise OutputDirLockedError(error)
    try:
        if lock is not None:
            from .io import remove_stale_temp_files

            removed = remove_stale_temp_files(directory)
            if removed:
                logger.warning("Removed %d temporary file(s) of interrupted writes in %s: %s", len(removed),
                               directory, ", ".join(os.path.relpath(p, directory) for p in removed))
        yield lock
    finally:
        if lock is not None:
            lock.release()
