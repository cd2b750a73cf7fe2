"""Which cache entries a computation read, with stamps of their content, so that a result kept on disk (a
judgement) can tell the entries it rests on from entries built again under the same names since (an entry's name is
a key of its settings, not of its weights: a cache deleted and rebuilt on another CPU keeps the names)."""

from __future__ import annotations

import functools
import hashlib
import os
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from pathlib import Path

_read: ContextVar[list[Path] | None] = ContextVar("rlar_cache_entries_read", default=None)


@contextmanager
def entries_read() -> Iterator[list[Path]]:
    """The cache entries :func:`note_read` is told of inside (absolute, in order, each once)."""
    files: list[Path] = []
    token = _read.set(files)
    try:
        yield files
    finally:
        _read.reset(token)


def note_read(path: str | os.PathLike) -> None:
    """Record that the cache entry ``path`` was read (nothing outside :func:`entries_read`)."""
    files = _read.get()
    path = Path(path).expanduser().absolute()
    if files is not None and path not in files:
        files.append(path)


def file_sha256(path: str | os.PathLike) -> str:
    """The SHA-256 of a file's whole content, read 1 MiB at a time."""
    digest = hashlib.sha256()
    with open(path, "rb") as file:
        while block := file.read(1 << 20):
            digest.update(block)
    return digest.hexdigest()


@functools.lru_cache(maxsize=256)
def _content_hash(path: str, mtime_ns: int, size: int) -> str:
    """:func:`file_sha256`, once per version of a file (its time and size) in this process."""
    return file_sha256(path)


def content_stamps(files: Iterable[str | os.PathLike]) -> list[list]:
    """``[[path, size, SHA-256], ...]`` of those of ``files`` that exist: the same for a file built again to the same
    bytes, another for other weights under the same name."""
    stamps = []
    for path in map(Path, files):
        if path.is_file():
            stat = path.stat()
            stamps.append([str(path), stat.st_size, _content_hash(str(path), stat.st_mtime_ns, stat.st_size)])
    return stamps


def stamps_hold(stamps) -> bool:
    """Whether every file ``stamps`` (:func:`content_stamps`) names is still there with the same content; False for
    anything else (None: a record that kept no stamps cannot be checked)."""
    if not isinstance(stamps, list) or not all(isinstance(s, list) and len(s) == 3 for s in stamps):
        return False
    return content_stamps(path for path, _, _ in stamps) == stamps
