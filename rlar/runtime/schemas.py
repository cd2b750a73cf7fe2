"""Structured-config schema of the logger option (registered as ``schema/logger/<name>``); the hardware options
are typed by :class:`rlar.runtime.hardware.Hardware` itself."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


@dataclass
class TensorBoardSchema:
    """TensorBoard event files in <output dir>/<log_dir>."""

    _target_: str = "rlar.runtime.logger.TensorBoardLogger"
    log_dir: str = "tensorboard"
    log_every: int = 1
    image_every: int = 25  # input | its G samples, every N iterations


@dataclass
class WandbSchema:
    """Weights & Biases, files in <output dir>/wandb (the wandb extra: pip install 'rlar[wandb]')."""

    _target_: str = "rlar.runtime.wandb_logger.WandbLogger"
    project: str = "rlar"
    entity: str | None = None  # null = your default W&B entity
    name: str | None = None  # null = the run's output directory name (its overrides)
    group: str | None = None
    tags: list[str] = field(default_factory=list)
    mode: str = "offline"  # offline (no network; `wandb sync` uploads later) | online | disabled
    log_every: int = 1
    image_every: int = 25  # input | its G samples, every N iterations


@dataclass
class MultiLoggerSchema:
    """Several loggers at once, each with its own settings: logger.loggers.<name>.<option>."""

    _target_: str = "rlar.runtime.multi_logger.MultiLogger"
    loggers: dict[str, Any] = field(default_factory=dict)
