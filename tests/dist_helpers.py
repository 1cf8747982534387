"""Test helper: run a script as the ranks of a CPU (gloo) process group on this machine."""
import os
import socket
import subprocess
import sys
from typing import Dict, List, Optional, Sequence

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def free_port() -> int:
    """A TCP port on 127.0.0.1 that is free now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def run_ranks(argv: Sequence[str], world_size: int = 2, timeout: float = 120,
              env: Optional[Dict[str, str]] = None) -> List[str]:
    """Runs ``python argv...`` once per rank with the torchrun environment (MASTER_ADDR/PORT,
    WORLD_SIZE, RANK, LOCAL_RANK; ``MB_ROOT`` = the checkout, one OpenMP thread, gloo on the loopback
    interface), waits for all, kills any left after ``timeout`` s, and asserts every rank exited with
    0 (the message holds the end of the failing rank's output). Returns each rank's output."""
    port = free_port()
    procs = []
    for rank in range(world_size):
        rank_env = dict(os.environ, MB_ROOT=ROOT, MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port),
                        WORLD_SIZE=str(world_size), RANK=str(rank), LOCAL_RANK=str(rank), OMP_NUM_THREADS="1",
                        **(env or {}))
        if sys.platform.startswith("linux"):
            rank_env.setdefault("GLOO_SOCKET_IFNAME", "lo")
        procs.append(subprocess.Popen([sys.executable, *map(str, argv)], env=rank_env, stdout=subprocess.PIPE,
                                      stderr=subprocess.STDOUT, text=True))
    try:
        outputs = [p.communicate(timeout=timeout)[0] for p in procs]
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
    for rank, (p, out) in enumerate(zip(procs, outputs)):
        assert p.returncode == 0, f"rank {rank} failed:\n{out[-4000:]}"
    return outputs
