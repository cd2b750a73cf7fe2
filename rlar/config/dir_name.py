"""The run directory's name: the overrides, each ``/`` written ``%2F`` so that the name is one path component, or
a short hash of them where they are too long for one file name.

``hydra.run.dir`` and ``hydra.sweep.subdir`` read ``${rlar_dir_name:${hydra.overrides.task},
${hydra.job.config.override_dirname}}``: Hydra's ``override_dirname`` of the job's overrides, except that an
``exclude_keys`` entry is a pattern (``logger.*``: every key under ``logger``); the full overrides always stay in
the run's ``.hydra/overrides.yaml``.
"""

from __future__ import annotations

import hashlib
from fnmatch import fnmatchcase

from hydra.core.override_parser.overrides_parser import OverridesParser
from omegaconf import OmegaConf

MAX_NAME_BYTES = 255  # NAME_MAX of ext4, XFS, APFS, NTFS
KEPT_BYTES = 120  # of a long name, the start kept readable before its hash
SLASH = "%2F"  # what a ``/`` in the overrides (``policy.checkpoint=shared/run``, a URL) is written as


def dir_name(overrides: str) -> str:
    """``overrides`` as one file name: each ``/`` written :data:`SLASH`; when that is longer than a file name may
    be, its first bytes and a hash of the whole."""
    name = overrides.replace("/", SLASH)
    if len(name.encode()) <= MAX_NAME_BYTES:
        return name
    digest = hashlib.sha1(overrides.encode()).hexdigest()[:12]
    start = name.encode()[:KEPT_BYTES].decode(errors="ignore")
    return f"{start}...{digest}"


def excluded(key: str, exclude_keys: list[str]) -> bool:
    """Whether ``key`` (``a.b``, or a group) matches one of the ``exclude_keys`` patterns (``logger.*``, or exact)."""
    return any(fnmatchcase(key, pattern) for pattern in exclude_keys)


def named_overrides(task: list[str], exclude_keys: list[str], item_sep: str, kv_sep: str) -> str:
    """The ``task`` overrides whose key is not :func:`excluded`, sorted and joined as Hydra's ``override_dirname``
    joins them."""
    kept = [o.input_line for o in OverridesParser.create().parse_overrides(list(task))
            if not excluded(o.key_or_group, exclude_keys)]
    return item_sep.join(sorted(kept)).replace("=", kv_sep)


def run_dir_name(task: list[str], override_dirname) -> str:
    """The run directory's name of a job with the ``task`` overrides under Hydra's ``override_dirname`` settings."""
    return dir_name(named_overrides(task, list(override_dirname.exclude_keys), override_dirname.item_sep,
                                    override_dirname.kv_sep))


def register_dir_name_resolver() -> None:
    """Make ``${rlar_dir_name:...}`` available to the config (idempotent)."""
    if not OmegaConf.has_resolver("rlar_dir_name"):
        OmegaConf.register_new_resolver("rlar_dir_name", run_dir_name)
