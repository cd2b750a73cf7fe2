"""The folders a user's own modules are imported from: a ``_target_`` that names a class of the user's (a reward in
``my_rewards.py`` beside their configs) imports from a console script (``rlar-run``, ``rlar-eval``, ...) as it does
from ``python -m rlar.run``, which puts the current folder on ``sys.path``."""

from __future__ import annotations

import os
import sys
from pathlib import Path


def importable(*folders: str | os.PathLike | None) -> None:
    """Put the current folder first on ``sys.path``, as ``python -m`` does, and each of ``folders`` (None: none)
    after the folders already there."""
    if os.getcwd() in sys.path:
        sys.path.remove(os.getcwd())
    sys.path.insert(0, os.getcwd())
    for folder in folders:
        path = None if folder is None else str(Path(folder).expanduser().absolute())
        if path is not None and path not in sys.path:
            sys.path.append(path)
