"""``python -m rlar.studies.measured_run [overrides]``: ``rlar.run``'s entry point that, when
``$RLAR_MEASURE_DIR`` is set, writes this process's peak resident memory (and peak CUDA memory, when it used a
GPU) and wall time to ``$RLAR_MEASURE_DIR/rank<RANK>.json`` as it exits (one file per torchrun process; used by
the rehearsal and the GPU check, which launch it with :func:`run_phase`)."""

from __future__ import annotations

import atexit
import json
import os
import resource
import signal
import subprocess
import time
from pathlib import Path

import torch

from rlar import run
from rlar.runtime.distributed import env_rank

MEASURE_DIR = "RLAR_MEASURE_DIR"


def peak_rss_mib() -> float:
    """This process's peak resident set size in MiB (Linux reports ``ru_maxrss`` in KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def write_measures(directory: Path, rank: int, started: float) -> None:
    directory.mkdir(parents=True, exist_ok=True)
    record = {"rank": rank, "peak_rss_mib": peak_rss_mib(), "wall_s": time.perf_counter() - started}
    if torch.cuda.is_initialized():
        record["peak_cuda_mib"] = torch.cuda.max_memory_allocated() / 2**20
    (directory / f"rank{rank}.json").write_text(json.dumps(record))


def run_phase(cmd: list[str], work: Path, name: str, threads: int, timeout_s: int = 0) -> dict:
    """Run ``cmd`` (a ``rlar.studies.measured_run`` launch) with each process measuring itself, its output in
    ``work/<name>.log``, killed with its whole process group after ``timeout_s`` (0: never; exit code "timeout");
    its exit code, seconds, per-process peak memory (and peak GPU memory, when it used one), log file and
    log tail."""
    measures, log = work / "measures" / name, work / f"{name}.log"
    env = {**os.environ, "OMP_NUM_THREADS": str(threads), MEASURE_DIR: str(measures)}
    print(f"{name}: running (log: {log})", flush=True)
    tic = time.perf_counter()
    with log.open("w") as sink:
        proc = subprocess.Popen(cmd, stdout=sink, stderr=subprocess.STDOUT, env=env, start_new_session=True)
        try:
            code = proc.wait(timeout=timeout_s or None)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)  # torchrun's workers too
            proc.wait()
            code = "timeout"
    seconds = time.perf_counter() - tic
    ranks = [json.loads(p.read_text()) for p in sorted(measures.glob("rank*.json"))] if measures.is_dir() else []
    result = {"returncode": code, "seconds": seconds, "log": str(log), "log_tail": log.read_text()[-3000:],
              "peak_rss_mib": {f"rank{r['rank']}": r["peak_rss_mib"] for r in ranks}}
    if any("peak_cuda_mib" in r for r in ranks):
        result["peak_cuda_mib"] = {f"rank{r['rank']}": r["peak_cuda_mib"] for r in ranks if "peak_cuda_mib" in r}
    return result


def cli() -> None:
    if os.environ.get(MEASURE_DIR):
        atexit.register(write_measures, Path(os.environ[MEASURE_DIR]), env_rank(), time.perf_counter())
    run.cli()


if __name__ == "__main__":
    cli()
