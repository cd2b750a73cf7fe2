"""A Hydra callback that creates the sweep dir when a multirun starts, before the sweeper opens its storage.

Hydra makes ``hydra.sweep.dir`` only when it launches the first job; the Optuna sweeper opens its SQLite file
(``sqlite:///${hydra.sweep.dir}/optuna.db``) before that, and SQLite cannot create a missing folder.
"""

from __future__ import annotations

from pathlib import Path

from hydra.experimental.callback import Callback
from omegaconf import DictConfig


class MakeSweepDir(Callback):
    def on_multirun_start(self, config: DictConfig, **kwargs) -> None:
        Path(config.hydra.sweep.dir).mkdir(parents=True, exist_ok=True)
