"""``python -m rlar.studies.measured_run [overrides]``: ``rlar.run``'s entry point that, when
``$RLAR_MEASURE_DIR`` is set, writes this process's peak resident memory (and peak CUDA memory, when it used a
GPU) and wall time to ``$RLAR_MEASURE_DIR/rank<RANK>.json`` as it exits (one file per torchrun process; used by
the rehearsal and the GPU check)."""

from __future__ import annotations

import atexit
import json
import os
import resource
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


def cli() -> None:
    if os.environ.get(MEASURE_DIR):
        atexit.register(write_measures, Path(os.environ[MEASURE_DIR]), env_rank(), time.perf_counter())
    run.cli()


if __name__ == "__main__":
    cli()
