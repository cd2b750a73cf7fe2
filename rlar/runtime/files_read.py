"""Which model files a computation read: the cache entries and checkpoints it loaded, with their stamps, so that a
result kept on disk (a judgement) can tell the files it rests on from files rebuilt or replaced under the same
names since (a cache entry's name is a key of its settings, not of its weights)."""

from __future__ import annotations

import os
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from pathlib import Path

_read: ContextVar[list[Path] | None] = ContextVar("rlar_model_files_read", default=None)


@contextmanager
def model_files_read() -> Iterator[list[Path]]:
    """The model files :func:`note_read` is told of inside (absolute, in order, each once)."""
    files: list[Path] = []
    token = _read.set(files)
    try:
        yield files
    finally:
        _read.reset(token)


def note_read(path: str | os.PathLike) -> None:
    """Record that the model file ``path`` was read (nothing outside :func:`model_files_read`)."""
    files = _read.get()
    path = Path(path).expanduser().absolute()
    if files is not None and path not in files:
        files.append(path)


def file_stamps(files: Iterable[str | os.PathLike]) -> list[list]:
    """``[[path, modification time (ns), size], ...]`` of those of ``files`` that exist: a file written again, in
    place or under its name, has another stamp."""
    return [[str(f), f.stat().st_mtime_ns, f.stat().st_size] for f in map(Path, files) if f.is_file()]


def stamps_hold(stamps) -> bool:
    """Whether every file ``stamps`` (:func:`file_stamps`) names is still there with the same stamp; False for
    anything else (None: a record that kept no stamps cannot be checked)."""
    if not isinstance(stamps, list) or not all(isinstance(s, list) and len(s) == 3 for s in stamps):
        return False
    return file_stamps(path for path, _, _ in stamps) == stamps
