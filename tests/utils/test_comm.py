"""Collective timeout (DIST_TIMEOUT_S): with two gloo processes where rank 1 stalls, rank 0 fails fast
with an error naming itself, the operation and the timeout key, instead of waiting 30 minutes."""
import os
import re
import socket
import subprocess
import sys
import textwrap

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

WORKER = textwrap.dedent(r'''
    import os, sys, time
    sys.path.insert(0, os.environ["MB_ROOT"])
    from maskrcnn_benchmark.utils import comm
    from maskrcnn_benchmark.utils.launch import init_distributed
    from maskrcnn_benchmark.config import setup_cfg

    cfg = setup_cfg("", ["DIST_TIMEOUT_S", 3, "MODEL.DEVICE", "cpu"])
    init_distributed(None, cfg.MODEL.DEVICE, timeout_s=cfg.DIST_TIMEOUT_S)
    op = sys.argv[1]
    if comm.get_rank() == 1:
        print("stalling", flush=True)
        time.sleep(120)  # a stalled process (SIGSTOP, deadlock, ...)
        sys.exit(0)
    start = time.time()
    try:
        comm.all_gather({"x": 1}) if op == "all_gather" else comm.synchronize()
    except RuntimeError as e:
        print(f"ERROR after {time.time() - start:.0f}s: {e}", flush=True)
        os._exit(3)  # skip gloo's teardown with a peer still hanging (it may abort the process)
    os._exit(0)
''')


def _free_port():
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.parametrize("op, names", [("all_gather", r"waiting in all_gather"),
                                       ("barrier", r"waiting in barrier.*Ranks? 1 failed")])
def test_stalled_rank_times_out_with_clear_message(tmp_path, op, names):
    script = tmp_path / "worker.py"
    script.write_text(WORKER)
    port = _free_port()
    procs = []
    for rank in (0, 1):
        env = dict(os.environ, MB_ROOT=ROOT, RANK=str(rank), LOCAL_RANK=str(rank), WORLD_SIZE="2",
                   MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), OMP_NUM_THREADS="1")
        procs.append(subprocess.Popen([sys.executable, str(script), op], env=env, stdout=subprocess.PIPE,
                                      stderr=subprocess.STDOUT, text=True))
    try:
        out0, _ = procs[0].communicate(timeout=90)  # torch's default would block for 30 minutes
    finally:
        for p in procs:
            p.kill()
            p.wait()
    assert procs[0].returncode == 3, out0
    assert "rank 0 of 2" in out0 and "DIST_TIMEOUT_S" in out0 and "after 3 s" in out0, out0
    assert re.search(names, out0), out0  # a gloo barrier also names the rank that never arrived
