"""The run directory's name: the overrides, or a short hash of them where they are too long for one file name.

``hydra.run.dir`` and ``hydra.sweep.subdir`` read ``${rlar_dir_name:${hydra.job.override_dirname}}``; the full
overrides always stay in the run's ``.hydra/overrides.yaml``.
"""

from __future__ import annotations

import hashlib

from omegaconf import OmegaConf

MAX_NAME_BYTES = 255  # NAME_MAX of ext4, XFS, APFS, NTFS
KEPT_BYTES = 120  # of a long name, the start kept readable before its hash


def dir_name(overrides: str) -> str:
    """``overrides`` itself when it fits in a file name, else its first bytes and a hash of the whole."""
    if len(overrides.encode()) <= MAX_NAME_BYTES:
        return overrides
    digest = hashlib.sha1(overrides.encode()).hexdigest()[:12]
    start = overrides.encode()[:KEPT_BYTES].decode(errors="ignore")
    return f"{start}...{digest}"


def register_dir_name_resolver() -> None:
    """Make ``${rlar_dir_name:...}`` available to the config (idempotent)."""
    if not OmegaConf.has_resolver("rlar_dir_name"):
        OmegaConf.register_new_resolver("rlar_dir_name", dir_name)
