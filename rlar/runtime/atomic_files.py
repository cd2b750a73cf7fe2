"""Files written through a temporary file beside them and a rename: a crash never leaves half a file, and readers
see the old or the new content."""

from __future__ import annotations

import os
from pathlib import Path

import torch


def atomic_torch_save(obj, path: str | os.PathLike) -> None:
    """Write to a temporary file beside ``path``, then rename: a crash never leaves half a file. Written through a
    Python file, so a full disk raises ``OSError`` (ENOSPC), where ``torch.save`` to a path raises a
    ``RuntimeError`` from its C++ writer."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        with open(tmp, "wb") as file:
            torch.save(obj, file)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def atomic_write_text(path: str | os.PathLike, text: str) -> None:
    """``path.write_text(text)`` through a temporary file and a rename: readers see the old or the new text."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        tmp.write_text(text)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
