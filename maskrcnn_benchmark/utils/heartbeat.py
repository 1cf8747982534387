"""Stall watchdog: a stopped, frozen or dead rank is named within minutes, independently of the
collective timeout (DIST_TIMEOUT_S, which only says that *some* peer did not answer, after 10 minutes
by default).

Every rank runs one background thread (:class:`Heartbeat`) that, every ``period_s`` seconds,

1. writes its heartbeat ``OUTPUT_DIR/.heartbeat/rank_<r>.json`` (a counter that grows with every
   beat, the rank's last finished iteration and its current *phase*, pid and host), and
2. reads every rank's heartbeat and reports, as an ERROR log line:

   * a rank whose counter has not changed for ``stall_timeout_s`` (its process is stopped,
     e.g. SIGSTOP, frozen, swapped out, or dead; or its file system stalled), with its last
     iteration and phase;
   * a run in which no rank made progress (no iteration finished and no phase changed) for
     ``stall_timeout_s`` while every rank is in the monitored phase ``"step"`` (a deadlock or an
     endless data loader wait), with every rank's iteration.

Phases other than ``"step"`` are exempt from the progress check (not from the liveness check, which
the background thread keeps satisfied whatever the main thread does): the trainer announces
``"hooks"`` (evaluation, checkpoint writing and logging after a step) and ``"setup"`` / ``"final"``;
see :class:`~maskrcnn_benchmark.engine.hooks.HeartbeatHook`. So a long evaluation or checkpoint
write raises no false alarm.

Staleness is measured on the *reader's* monotonic clock (when it last saw a counter change), so
clock skew between hosts does not matter. The lowest rank that is itself alive reports (one report
per stall; again after the rank recovers and stalls anew). On several hosts OUTPUT_DIR must be a
shared folder, as for checkpoints; a rank whose heartbeat was never seen is not reported.
"""
from __future__ import annotations

import contextlib
import json
import logging
import os
import socket
import threading
import time
from typing import Dict, Iterator, List, Optional, Tuple

__all__ = ["Heartbeat", "HEARTBEAT_DIR", "MONITORED_PHASE"]

HEARTBEAT_DIR = ".heartbeat"
MONITORED_PHASE = "step"
logger = logging.getLogger("maskrcnn_benchmark.heartbeat")


class Heartbeat:
    """One rank's heartbeat writer and watchdog.

    Args:
        directory: the run's OUTPUT_DIR (heartbeats go to ``directory/.heartbeat/``).
        rank, world_size: this process's rank and the number of ranks.
        period_s: seconds between beats and checks (DIST_HEARTBEAT_PERIOD_S).
        stall_timeout_s: a rank silent, or a run without progress, for this long is reported
            (DIST_STALL_TIMEOUT_S; 0 disables the watchdog).
        log: where reports go (ERROR); default ``maskrcnn_benchmark.heartbeat``. On ranks other than
            0, which have no log handlers, Python prints ERROR records on stderr.
    """

    def __init__(self, directory: str, rank: int, world_size: int, period_s: float = 10.0,
                 stall_timeout_s: float = 120.0, log: Optional[logging.Logger] = None):
        if period_s <= 0 or stall_timeout_s < 0:
            raise ValueError(f"heartbeat: DIST_HEARTBEAT_PERIOD_S must be > 0 and DIST_STALL_TIMEOUT_S >= 0, got "
                             f"{period_s} and {stall_timeout_s}")
        self.folder = os.path.join(directory, HEARTBEAT_DIR)
        self.rank, self.world_size = int(rank), int(world_size)
        self.period_s, self.stall_timeout_s = float(period_s), float(stall_timeout_s)
        self.log = log or logger
        self.iteration = 0
        self.phase = "setup"
        self.beats = 0
        self._progress = 0  # bumped on every iteration / phase change of this rank
        self._stop = threading.Event()
        self._thread: Optional[threading.Thread] = None
        # per observed rank: (counter, progress, monotonic time the counter / progress last changed)
        self._seen: Dict[int, Tuple[int, int, float, float]] = {}
        self._reported_dead: set = set()
        self._reported_stall = False

    # ---- the main thread's side -------------------------------------------------------------
    def update(self, iteration: Optional[int] = None, phase: Optional[str] = None) -> None:
        """Record this rank's last finished ``iteration`` and / or current ``phase`` (no I/O)."""
        if iteration is not None and iteration != self.iteration:
            self.iteration = int(iteration)
            self._progress += 1
        if phase is not None and phase != self.phase:
            self.phase = str(phase)
            self._progress += 1

    @contextlib.contextmanager
    def announce(self, phase: str) -> Iterator[None]:
        """Run the ``with`` body in ``phase`` (e.g. "evaluation"), then return to the previous phase."""
        previous = self.phase
        self.update(phase=phase)
        try:
            yield
        finally:
            self.update(phase=previous)

    def start(self) -> "Heartbeat":
        """Write the first beat and start the background thread (no-op when disabled)."""
        if self.stall_timeout_s <= 0 or self._thread is not None:
            return self
        os.makedirs(self.folder, exist_ok=True)
        self.beat()
        self._thread = threading.Thread(target=self._run, name=f"heartbeat-rank{self.rank}", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        """Stop the thread and remove this rank's heartbeat file."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=self.period_s + 5)
            self._thread = None
        with contextlib.suppress(OSError):
            os.remove(self._path(self.rank))
        with contextlib.suppress(OSError):
            os.rmdir(self.folder)  # the last rank to stop removes the (then empty) folder

    # ---- the background thread --------------------------------------------------------------
    def _path(self, rank: int) -> str:
        return os.path.join(self.folder, f"rank_{rank}.json")

    def beat(self) -> None:
        """Write this rank's heartbeat file (write a temp file, then rename: readers never see half)."""
        self.beats += 1
        record = {"rank": self.rank, "beats": self.beats, "progress": self._progress, "iteration": self.iteration,
                  "phase": self.phase, "pid": os.getpid(), "host": socket.gethostname(), "time": time.time()}
        path = self._path(self.rank)
        tmp = f"{path}.{os.getpid()}.{id(self)}.tmp"
        with open(tmp, "w", encoding="utf-8") as f:
            json.dump(record, f)
        os.replace(tmp, path)

    def read(self) -> Dict[int, dict]:
        """The heartbeat records that can be read now, by rank (< world_size)."""
        records = {}
        for rank in range(self.world_size):
            try:
                with open(self._path(rank), encoding="utf-8") as f:
                    record = json.load(f)
            except (OSError, ValueError):
                continue
            if isinstance(record, dict):
                records[rank] = record
        return records

    def check(self, records: Dict[int, dict], now: float) -> List[str]:
        """Reports due at monotonic time ``now`` given the ``records`` just read (see the module
        doc); updates what this observer has seen. Returns the messages (already logged)."""
        for rank, r in records.items():
            key = (int(r.get("beats", 0)), int(r.get("progress", 0)))
            old = self._seen.get(rank)
            if old is None or key[0] != old[0]:
                beat_time = now
                self._reported_dead.discard(rank)
            else:
                beat_time = old[2]
            progress_time = now if old is None or key[1] != old[1] else old[3]
            self._seen[rank] = (key[0], key[1], beat_time, progress_time)
        dead = [rank for rank, (_, _, t, _) in self._seen.items()
                if now - t > self.stall_timeout_s and rank != self.rank]
        alive = [rank for rank in range(self.world_size) if rank not in dead]
        reports: List[str] = []
        if not alive or min(alive) != self.rank:
            return reports  # the lowest live rank reports
        for rank in sorted(set(dead) - self._reported_dead):
            r = records.get(rank, {})
            reports.append(
                f"rank {rank} of {self.world_size} (pid {r.get('pid', '?')} on {r.get('host', '?')}) has not "
                f"sent a heartbeat for {now - self._seen[rank][2]:.0f} s (DIST_STALL_TIMEOUT_S "
                f"{self.stall_timeout_s:g}): its process is stopped (SIGSTOP / ctrl-Z), frozen or dead, or its "
                f"file system stalled. Its last finished iteration: {r.get('iteration', '?')}, phase "
                f"{r.get('phase', '?')!r}. The other ranks wait for it in their next collective until "
                f"DIST_TIMEOUT_S expires")
            self._reported_dead.add(rank)
        live_seen = {rank: self._seen[rank] for rank in alive if rank in self._seen}
        all_stepping = len(live_seen) == self.world_size and all(
            records.get(rank, {}).get("phase") == MONITORED_PHASE for rank in live_seen)
        stalled = all_stepping and all(now - p > self.stall_timeout_s for (_, _, _, p) in live_seen.values())
        if stalled and not self._reported_stall:
            where = ", ".join(f"rank {rank} at iteration {records[rank].get('iteration', '?')}" for rank in live_seen)
            reports.append(f"no training progress on any rank for more than {self.stall_timeout_s:g} s "
                           f"(DIST_STALL_TIMEOUT_S), all alive and inside a training step: {where}. A rank is "
                           f"stuck (deadlock, data loader waiting for a worker, ...)")
        self._reported_stall = stalled
        for message in reports:
            self.log.error(message)
        return reports

    def _run(self) -> None:
        while not self._stop.wait(self.period_s):
            try:
                self.beat()
                self.check(self.read(), time.monotonic())
            except Exception as e:  # noqa: BLE001 - the watchdog must never stop training
                self.log.warning("heartbeat of rank %d: %s: %s", self.rank, type(e).__name__, e)
