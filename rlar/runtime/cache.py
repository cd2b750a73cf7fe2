"""Cached artifacts (the embedded tokenizer and prior): trained once, keyed by everything that shapes them."""

from __future__ import annotations

import hashlib
import json
import logging
import os
import pickle
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import torch

from rlar.runtime.atomic_files import atomic_torch_save
from rlar.runtime.build_checkpoint import BuildCheckpoint
from rlar.runtime.files_read import file_sha256, note_read
from rlar.runtime.stop_signals import Stopped, StopRequest

log = logging.getLogger(__name__)

BUILD_THREADS = 2  # CPU threads of every cache build, whatever the run's own count; $RLAR_BUILD_THREADS overrides


def default_cache_dir() -> Path:
    """``$RLAR_CACHE_DIR``, else ``~/.cache/rlar``."""
    return Path(os.environ.get("RLAR_CACHE_DIR", Path.home() / ".cache" / "rlar")).expanduser()


def cache_root(cache_dir: str | os.PathLike | None) -> Path:
    """The config's ``cache_dir``, else :func:`default_cache_dir`."""
    return Path(cache_dir).expanduser() if cache_dir else default_cache_dir()


@contextmanager
def seeded(seed: int) -> Iterator[None]:
    """Torch's global CPU random state seeded with ``seed`` inside, restored afterwards: a model built (initialised,
    trained; on the CPU) here is the same whatever ran before, so a cached artifact depends only on its key, and the
    caller's random state stays untouched (the GPUs' too: ``torch.manual_seed`` would reseed them for good)."""
    with torch.random.fork_rng(devices=[]):
        torch.default_generator.manual_seed(seed)
        yield


def checkpoint_file(source: str) -> tuple[Path, str] | None:
    """The checkpoint file a tokenizer's ``source`` names and the note after its path (``" (EMA weights)"``, or
    ``""``); None when it names no file."""
    path = Path(source).expanduser()
    if path.is_file():
        return path, ""
    head, sep, note = source.rpartition(" (")
    if sep and note.endswith(")") and Path(head).expanduser().is_file():
        return Path(head).expanduser(), f" ({note}"
    return None


def source_key(source: str, cache_dir: str | os.PathLike | None) -> str:
    """How a cache key names a model another one is built from (the prior's tokenizer): an entry of this cache by
    its file name, which holds its own key, so a cache copied to another machine or mounted at another path keeps
    its keys; any other file (a checkpoint) by the SHA-256 of its content (and the note after its path, such as
    ``(EMA weights)``), so the same file at any path keeps its key and one overwritten in place gets a new one. The
    whole file is hashed, once per prior built or loaded: a 290 MB LlamaGen VQ file, just read by ``torch.load``, in
    about 0.2-1 s; a sample of it could miss a fine-tune of its codebook alone. A source that names no file: as is."""
    path = Path(source).expanduser()
    if path.parent.resolve() == cache_root(cache_dir).resolve():
        return path.name
    found = checkpoint_file(source)
    return source if found is None else f"sha256:{file_sha256(found[0])}{found[1]}"


def build_thread_count() -> int:
    """``$RLAR_BUILD_THREADS``, else :data:`BUILD_THREADS`: the CPU threads a cache build runs on."""
    value = os.environ.get("RLAR_BUILD_THREADS", str(BUILD_THREADS))
    if not value.isdigit() or int(value) < 1:
        raise ValueError(f"RLAR_BUILD_THREADS={value!r} is not a positive whole number of threads; unset it (cache "
                         f"builds then run on {BUILD_THREADS}) or set it to one, e.g. RLAR_BUILD_THREADS=1")
    return int(value)


@contextmanager
def build_threads(count: int) -> Iterator[None]:
    """Torch's CPU thread count set to ``count`` inside, restored afterwards. The thread count splits
    floating-point sums differently, and a few hundred training steps carry the last bits into other weights, so a
    cache built at one fixed count is the same whatever ``hardware.num_threads`` the building run had (on one
    kind of CPU: another instruction set still sums differently)."""
    before = torch.get_num_threads()
    torch.set_num_threads(count)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def load_checkpoint(path: str | os.PathLike, what: str):
    """``torch.load(weights_only=True)`` with an error that names the missing file and the config key."""
    path = Path(path).expanduser()
    if not path.is_file():
        raise FileNotFoundError(f"{what}: checkpoint '{path}' does not exist; fix the path")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except (EOFError, IndexError, KeyError, RuntimeError, ValueError, pickle.UnpicklingError) as e:
        size = path.stat().st_size
        raise ValueError(f"{what}: '{path}' ({size} bytes) is not a readable PyTorch checkpoint ({type(e).__name__}: "
                         f"{e}); give a file written by torch.save (a state dict), or re-download it") from e


def spec_key(spec: dict, length: int = 12) -> str:
    """A short hash of ``spec``'s content, the same whatever the order of its keys: the name of what it built."""
    return hashlib.sha1(json.dumps(spec, sort_keys=True, default=str).encode()).hexdigest()[:length]


def cached_artifact(cache_dir: str | os.PathLike | None, name: str, spec: dict,
                    build: Callable[[BuildCheckpoint], tuple[dict, dict]], missing: str | None = None
                    ) -> tuple[dict, Path]:
    """Return the state dict cached under ``name-<hash(spec)>.pt``, building it with ``build(checkpoint)`` on a miss
    (``missing``: a miss is an error with this message instead, nothing built).

    ``build`` returns ``(state_dict, metrics)``; metrics and spec are written beside it as JSON. It runs on
    :func:`build_thread_count` CPU threads, so the entry does not depend on the building run's thread count; a count
    other than :data:`BUILD_THREADS` builds other weights, so it enters the spec (and the key) as ``build_threads``.
    A stop signal during the build ends it at the end of its loop's current step, saved through ``checkpoint`` (the
    next build resumes there), or, when the loop was done, once the entry is written: ``Stopped`` either way.
    """
    threads = build_thread_count()
    if threads != BUILD_THREADS:
        spec = {**spec, "build_threads": threads}
    path = cache_root(cache_dir) / f"{name}-{spec_key(spec)}.pt"
    if path.is_file():
        log.info("%s: using cached %s", name, path)
        note_read(path)
        return torch.load(path, map_location="cpu", weights_only=True), path
    if missing is not None:
        raise FileNotFoundError(f"{missing} (no {path})")
    log.info("%s: not cached yet, training it on %d CPU threads (cached afterwards at %s)", name, threads, path)
    with build_threads(threads), StopRequest().listening() as stop:
        checkpoint = BuildCheckpoint(path.with_name(f"{path.stem}.partial.pt"), f"{name} ({path.name})", stop)
        state, metrics = build(checkpoint)
        atomic_torch_save(state, path)
        path.with_suffix(".json").write_text(json.dumps({"spec": spec, "metrics": metrics}, indent=2, default=str))
        checkpoint.finished()
    note_read(path)
    if stop.received:
        raise Stopped(f"stopped by {stop.received} while building {name}, after its last step: cached at {path}; "
                      "run the same command to go on")
    return state, path


def cached_metrics(path: Path) -> dict:
    """The metrics its build measured of the entry at ``path`` (its ``.json``, written beside it); ``{}`` when that
    file is missing or unreadable (a build stopped between the two writes)."""
    try:
        return json.loads(path.with_suffix(".json").read_text())["metrics"]
    except (OSError, ValueError, KeyError, TypeError):
        return {}
