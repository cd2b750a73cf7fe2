"""Structured-config schemas of the logger and scheduler options (registered as ``schema/logger/<name>``,
``schema/scheduler/<name>``); the hardware options are typed by :class:`rlar.runtime.hardware.Hardware` itself."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from omegaconf import II


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


@dataclass
class ConstantSchema:
    """The optimizer's lr throughout."""

    _target_: str = "rlar.runtime.lr_scheduler.constant"


@dataclass
class WarmupLinearSchema:
    """Linear warm-up over warmup_steps iterations, then the optimizer's lr."""

    _target_: str = "rlar.runtime.lr_scheduler.warmup_linear"
    warmup_steps: int = 10


@dataclass
class CosineSchema:
    """Linear warm-up, then a cosine decay to min_lr_ratio times the optimizer's lr at total_steps."""

    _target_: str = "rlar.runtime.lr_scheduler.cosine"
    total_steps: int = II("train.iterations")
    warmup_steps: int = 0
    min_lr_ratio: float = 0.0


SCHEDULER_SCHEMAS = {"constant": ConstantSchema, "warmup_linear": WarmupLinearSchema, "cosine": CosineSchema}
