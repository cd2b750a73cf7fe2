"""Two (or more) CPU processes under ``torchrun --standalone``, for the tests marked slow."""

import os
import subprocess
import sys


def torchrun(args: list[str], cwd=None, nproc: int = 2, env: dict | None = None,
             timeout: int = 600) -> subprocess.CompletedProcess:
    """``torchrun --nproc_per_node=nproc args`` (a script and its arguments, or ``-m module ...``), one thread per
    process (``env`` added to this one's); asserts that it exits 0, with the end of its output as the message."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", **(env or {})}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}", *args]
    proc = subprocess.run(cmd, capture_output=True, text=True, cwd=cwd, env=env, timeout=timeout)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-4000:]
    return proc


def torchrun_source(source: str, folder, *args: str) -> subprocess.CompletedProcess:
    """:func:`torchrun` of the Python ``source``, written to ``folder/script.py``, with ``args``."""
    script = folder / "script.py"
    script.write_text(source)
    return torchrun([str(script), *args])
