"""``python -m rlar.studies.bench_remote [reward=l2 ...]``: a remote reward against the same reward in-process.

Starts 2 local CPU reward servers (the Hydra overrides choose the reward; default ``reward=l2``), scores batches
of 1x32x32 images (the embedded default's size) of 64 and 256 items both ways, and prints throughput (images/s),
the remote/in-process ratio and the client overhead per image ((remote - in-process time) / N). The in-process
reward gets as many CPU threads as each server (half the cores), so that a busy machine does not skew it. The
servers are stopped at the end, also on error or Ctrl-C.
"""

from __future__ import annotations

import os
import socket
import sys
import tempfile
import time
from pathlib import Path

import torch

from rlar.config.store import compose_config
from rlar.reward.build import build_reward
from rlar.reward.remote.client import RemoteReward
from rlar.reward.remote.launch import start_servers, stop_servers, wait_ready


def free_port_pair() -> int:
    """A port p with p and p + 1 both free on 127.0.0.1."""
    for _ in range(50):
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", port + 1))
                return port
            except OSError:
                continue
    raise RuntimeError("no two consecutive free ports on 127.0.0.1")


def seconds_per_call(reward, batch: int, repeats: int) -> float:
    """Mean seconds of ``reward(images, targets)`` on ``[batch, 1, 32, 32]`` after one warm-up call."""
    g = torch.Generator().manual_seed(0)
    x, y = torch.rand(batch, 1, 32, 32, generator=g) * 2 - 1, torch.rand(batch, 1, 32, 32, generator=g) * 2 - 1
    reward(x, y, None)
    tic = time.perf_counter()
    for _ in range(repeats):
        scores, _ = reward(x, y, None)
        assert scores.isfinite().all(), "a remote item was not scored"
    return (time.perf_counter() - tic) / repeats


def main(argv: list[str] | None = None) -> None:
    overrides = (sys.argv[1:] if argv is None else argv) or ["reward=l2"]
    torch.set_num_threads(max(1, (os.cpu_count() or 1) // 2))  # what start_servers gives each of the 2 servers
    local = build_reward(compose_config(overrides))
    with tempfile.TemporaryDirectory() as logs:
        servers = start_servers(2, free_port_pair(), "127.0.0.1", overrides, Path(logs), devices=[])
        try:
            failed = wait_ready(servers, timeout_s=120.0)
            if failed:
                raise RuntimeError(f"{failed.url} did not start:\n{failed.log_path.read_text()}")
            remote = RemoteReward([s.url for s in servers], chunk_size=64)
            print(f"rlar remote reward bench: {' '.join(overrides)}, 2 CPU servers, chunks of 64, 1x32x32 images "
                  f"(CPU threads: {torch.get_num_threads()} in-process, as each server)")
            print(f"{'batch':>6} {'in-process img/s':>17} {'remote img/s':>13} {'remote/in-proc':>15} "
                  f"{'overhead ms/img':>16}")
            for batch in (64, 256):
                t_local, t_remote = seconds_per_call(local, batch, 20), seconds_per_call(remote, batch, 20)
                print(f"{batch:>6} {batch / t_local:>17.0f} {batch / t_remote:>13.0f} {t_local / t_remote:>14.3f}x "
                      f"{1000 * (t_remote - t_local) / batch:>16.4f}")
            remote.close()
        finally:
            stop_servers(servers)


if __name__ == "__main__":
    main()
