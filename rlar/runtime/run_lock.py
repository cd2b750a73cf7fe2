"""One command per run directory: ``run.lock`` held with ``fcntl.flock`` while a run trains (released at exit,
also when the process is killed)."""

from __future__ import annotations

import contextlib
import fcntl
from pathlib import Path


class RunDirLocked(RuntimeError):
    """Another process is training in the same run directory."""


@contextlib.contextmanager
def run_lock(out: str | Path):
    """Hold ``<out>/run.lock`` for the block; raises ``RunDirLocked`` at once if another process holds it."""
    path = Path(out) / "run.lock"
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a") as handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise RunDirLocked(f"another rlar run is already training in {path.parent} (it holds {path}); wait for "
                               "it to finish or stop it, or give this run another name") from None
        try:
            yield path
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)
