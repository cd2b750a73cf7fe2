"""Structured-config schema of the logger option (registered as ``schema/logger/<name>``); the hardware options
are typed by :class:`rlar.runtime.hardware.Hardware` itself."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass
class TensorBoardSchema:
    """TensorBoard event files in <output dir>/<log_dir>."""

    _target_: str = "rlar.runtime.logger.TensorBoardLogger"
    log_dir: str = "tensorboard"
    log_every: int = 1
    image_every: int = 25  # input | its G samples, every N iterations
