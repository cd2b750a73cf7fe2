"""``rlar-reward-launch`` keeps the healthy servers when one is killed, and starts the dead one again."""

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest
import torch

from rlar.reward.remote.wire import encode_request
from rlar.studies.bench_remote import free_port_pair

TIMEOUT_S = 120.0


def answers(url: str) -> bool:
    try:
        return httpx.get(f"{url}/health", timeout=1.0).status_code == 200
    except httpx.HTTPError:
        return False


def wait_until(condition, what: str, log_dir: Path) -> None:
    deadline = time.monotonic() + TIMEOUT_S
    while not condition():
        if time.monotonic() > deadline:
            logs = "\n".join(f"{p.name}:\n{p.read_text()}" for p in sorted(log_dir.glob("*.log")))
            raise AssertionError(f"timed out waiting for {what}; server logs:\n{logs}")
        time.sleep(0.2)


def server_pid(launcher: subprocess.Popen, port: int) -> int:
    """The launcher's child serving ``port`` (from /proc)."""
    children = Path(f"/proc/{launcher.pid}/task/{launcher.pid}/children").read_text().split()
    for pid in children:
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
        if str(port).encode() in cmdline:
            return int(pid)
    raise AssertionError(f"no server process for port {port} among {children}")


@pytest.mark.slow
@pytest.mark.skipif(not Path("/proc/self/task").is_dir(), reason="reads the process tree from /proc")
def test_a_killed_server_is_restarted_while_the_other_keeps_serving(tmp_path):
    port = free_port_pair()
    a, b = f"http://127.0.0.1:{port}", f"http://127.0.0.1:{port + 1}"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    launcher = subprocess.Popen([sys.executable, "-m", "rlar.reward.remote.launch", "--num", "2", "--port", str(port),
                                 "--log-dir", str(tmp_path), "--max-restarts", "1", "--startup-timeout", "120",
                                 "reward=l2"],
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    try:
        # the launcher's own readiness line: killing a server before it is printed tests startup, not restarts
        assert "reward servers up" in launcher.stdout.readline(), launcher.communicate(timeout=30)
        first = server_pid(launcher, port)
        os.kill(first, signal.SIGKILL)
        wait_until(lambda: not answers(a), "the killed server to stop answering", tmp_path)
        x = torch.zeros(2, 1, 8, 8)
        for _ in range(3):  # the healthy one keeps scoring meanwhile
            resp = httpx.post(f"{b}/score", content=encode_request(x, x, None), timeout=10.0)
            assert resp.status_code == 200
        assert launcher.poll() is None
        wait_until(lambda: answers(a), "the killed server to come back", tmp_path)
        assert server_pid(launcher, port) != first and answers(b)
    finally:
        launcher.terminate()
        _, stderr = launcher.communicate(timeout=30)
    assert "exited (-9); starting it again (1/1)" in stderr
