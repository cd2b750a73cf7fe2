"""Files written through a temporary file beside them and a rename: a crash never leaves half a file, and readers
see the old or the new content. The file's content is on the disk before the rename, and the rename before the
writer goes on (``fsync`` of both; the folder's where its file system allows it), so a power loss too leaves the old
file or the new one, never an empty one."""

from __future__ import annotations

import contextlib
import os
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import BinaryIO

import torch


def atomic_write(path: str | os.PathLike, write: Callable[[BinaryIO], None]) -> Path:
    """``write(file)`` into a temporary file beside ``path``, then rename it to ``path``: a crash never leaves half a
    file. Through a Python file, so a full disk raises ``OSError`` (ENOSPC)."""
    with atomic_path(path) as tmp, open(tmp, "wb") as file:
        write(file)
    return Path(path)


@contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """A temporary path beside ``path`` for the block to write (a library that writes to a path); renamed to ``path``
    when the block ends, removed if it fails."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        yield tmp
        if tmp.is_file():  # what open() gives: a library may create it private (safetensors: 0o600)
            with contextlib.suppress(OSError):  # a file system without modes (vfat) keeps its own
                os.chmod(tmp, created_mode())
        synced(tmp)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    with contextlib.suppress(OSError):  # the file is written; a folder that cannot be opened or synced stays as is
        synced(path.parent)


def created_mode() -> int:
    """The mode ``open`` gives a new file: 0o666 less the process's umask (read from ``/proc`` where it is shown,
    so that no other thread sees the umask changed)."""
    try:
        status = Path("/proc/self/status").read_text()
        mask = int(next(line.split()[1] for line in status.splitlines() if line.startswith("Umask:")), 8)
    except (OSError, StopIteration, ValueError, IndexError):
        mask = os.umask(0)
        os.umask(mask)
    return 0o666 & ~mask


def synced(path: Path) -> None:
    """``fsync`` of a file or folder (a folder: its entries, such as a rename)."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def atomic_torch_save(obj, path: str | os.PathLike) -> None:
    """``torch.save`` through :func:`atomic_write` (to a path, its C++ writer would raise a ``RuntimeError`` on a
    full disk, not an ``OSError``)."""
    atomic_write(path, lambda file: torch.save(obj, file))


def atomic_write_text(path: str | os.PathLike, text: str) -> None:
    """``path.write_text(text)`` (UTF-8) through :func:`atomic_write`: readers see the old or the new text."""
    atomic_write(path, lambda file: file.write(text.encode("utf-8")))
