"""``rlar-reward-launch``: N reward servers on consecutive ports, one per GPU when there are GPUs (else N CPU
processes), each logging to its own file; prints the client config that points at them and keeps them running
until interrupted (Ctrl-C or SIGTERM stops them all). A server that dies is started again (at most
``--max-restarts`` times); the others keep serving, and clients take it back once its ``/health`` answers."""

from __future__ import annotations

import argparse
import os
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import httpx
import torch


@dataclass
class Server:
    process: subprocess.Popen
    url: str  # for clients
    probe_url: str  # for this machine's readiness check (127.0.0.1 when the server binds a wildcard)
    log_path: Path
    cmd: list[str]
    env: dict[str, str]
    restarts: int = 0

    def restart(self) -> None:
        """The same command again, on the same port, appending to the same log."""
        with open(self.log_path, "a") as log:
            self.process = subprocess.Popen(self.cmd, stdout=log, stderr=subprocess.STDOUT, env=self.env)
        self.restarts += 1


def cuda_devices() -> list[str]:
    """The visible GPUs as CUDA_VISIBLE_DEVICES entries (empty without CUDA)."""
    count = torch.cuda.device_count()
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    return (visible.split(",") if visible else [str(i) for i in range(count)])[:count]


def start_servers(num: int, port: int, host: str, server_args: list[str], log_dir: Path,
                  devices: list[str]) -> list[Server]:
    """``num`` servers on ports ``port, port + 1, ...``: server i on GPU ``devices[i % len]`` if any, else CPU
    (``OMP_NUM_THREADS`` split between them unless set). Each writes ``log_dir/server-<port>.log``."""
    log_dir.mkdir(parents=True, exist_ok=True)
    wildcard = host in ("0.0.0.0", "::")
    public, probe = (socket.gethostname(), "127.0.0.1") if wildcard else (host, host)
    servers = []
    for i in range(num):
        env, overrides = dict(os.environ), []
        if devices:
            env["CUDA_VISIBLE_DEVICES"], overrides = devices[i % len(devices)], ["hardware.device=cuda"]
        else:
            env.setdefault("OMP_NUM_THREADS", str(max(1, (os.cpu_count() or 1) // num)))
        log_path = log_dir / f"server-{port + i}.log"
        with open(log_path, "w") as log:
            cmd = [sys.executable, "-m", "rlar.reward.remote.server", *overrides, *server_args,
                   "--host", host, "--port", str(port + i)]
            process = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=env)
        servers.append(Server(process, f"http://{public}:{port + i}", f"http://{probe}:{port + i}", log_path, cmd,
                              env))
    return servers


def wait_ready(servers: list[Server], timeout_s: float) -> Server | None:
    """Waits until every server answers ``/health`` (any HTTP status: it only binds once its reward is built);
    returns the first that exited or did not answer within ``timeout_s``, None when all are up."""
    deadline = time.monotonic() + timeout_s
    for server in servers:
        while True:
            if server.process.poll() is not None:
                return server
            try:
                httpx.get(f"{server.probe_url}/health", timeout=2.0)
                break
            except httpx.HTTPError:
                if time.monotonic() > deadline:
                    return server
                time.sleep(0.2)
    return None


def stop_servers(servers: list[Server], grace_s: float = 10.0) -> None:
    """SIGTERM every server, SIGKILL those still running after ``grace_s``."""
    for server in servers:
        if server.process.poll() is None:
            server.process.terminate()
    for server in servers:
        try:
            server.process.wait(timeout=grace_s)
        except subprocess.TimeoutExpired:
            server.process.kill()
            server.process.wait()


def supervise(servers: list[Server], max_restarts: int, poll_s: float = 1.0) -> None:
    """Until no server is left: start again each server that exited, up to ``max_restarts`` times each; one past
    its restarts is left down (its log shown). The healthy ones are never touched."""
    running = list(servers)
    while running:
        time.sleep(poll_s)
        for server in [s for s in running if s.process.poll() is not None]:
            code = server.process.returncode
            if server.restarts < max_restarts:
                print(f"rlar-reward-launch: {server.url} exited ({code}); starting it again "
                      f"({server.restarts + 1}/{max_restarts})", file=sys.stderr, flush=True)
                server.restart()
            else:
                print(f"rlar-reward-launch: {server.url} exited ({code}) after {max_restarts} restarts; leaving it "
                      f"down. {server.log_path}:\n{log_tail(server.log_path)}", file=sys.stderr, flush=True)
                running.remove(server)


def client_config(servers: list[Server]) -> str:
    urls = ",".join(s.url for s in servers)
    return (f"  python -m rlar.run reward=remote 'reward.urls=[{urls}]'\n"
            f"or in a reward config:\n  urls: [{', '.join(s.url for s in servers)}]")


def log_tail(path: Path, lines: int = 20) -> str:
    return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="rlar-reward-launch", description=__doc__,
                                epilog="Every other argument (Hydra overrides such as reward=ssim, server flags "
                                       "such as --max-batch or --token-file) goes to each rlar-reward-server.")
    p.add_argument("--num", type=int, help="servers to start (default: one per GPU, else 1)")
    p.add_argument("--port", type=int, default=8700, help="port of the first server; the others follow")
    p.add_argument("--host", default="127.0.0.1", help="bind address of every server")
    p.add_argument("--log-dir", type=Path, default=Path("reward-servers"), help="one log file per server here")
    p.add_argument("--startup-timeout", type=float, default=300.0, help="seconds to wait for all to answer")
    p.add_argument("--max-restarts", type=int, default=3, help="times a server that dies is started again")
    args, server_args = p.parse_known_args(argv)
    devices = cuda_devices()
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))  # stop the servers on SIGTERM too
    servers = start_servers(args.num or max(len(devices), 1), args.port, args.host, server_args, args.log_dir,
                            devices)
    try:
        failed = wait_ready(servers, args.startup_timeout)
        if failed:
            print(f"rlar-reward-launch: {failed.url} did not start; {failed.log_path}:\n{log_tail(failed.log_path)}",
                  file=sys.stderr)
            return 1
        where = "GPUs " + ",".join(devices) if devices else "CPU"
        print(f"{len(servers)} reward servers up on {where}; logs in {args.log_dir}/\nclient config:\n"
              f"{client_config(servers)}", flush=True)
        supervise(servers, args.max_restarts)
        print("rlar-reward-launch: no server left", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 0
    finally:
        stop_servers(servers)


if __name__ == "__main__":
    raise SystemExit(main())
