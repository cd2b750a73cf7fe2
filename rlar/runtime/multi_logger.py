"""Several loggers at once (``logger=multi``: TensorBoard and W&B)."""

from __future__ import annotations

import math
from pathlib import Path

import torch

from rlar.contracts import Logger
from rlar.runtime.logger import images_due


class MultiLogger:
    """Hands every call to each of ``loggers`` (name -> logger); each keeps its own ``log_every`` and
    ``image_every``."""

    def __init__(self, loggers: dict[str, Logger]):
        self.loggers = dict(loggers)

    @property
    def image_every(self) -> int:
        """Image grids are made every ``image_every`` steps: the greatest common divisor of the loggers' (0: none)."""
        return math.gcd(*(logger.image_every for logger in self.loggers.values()))

    def open(self, output_dir: str | Path) -> None:
        for logger in self.loggers.values():
            logger.open(output_dir)

    def scalars(self, metrics: dict[str, float], step: int) -> None:
        for logger in self.loggers.values():
            logger.scalars(metrics, step)

    def groups(self, tag: str, targets: torch.Tensor, samples: torch.Tensor, step: int, max_rows: int = 4) -> None:
        """To each logger whose images are due at ``step``."""
        for logger in self.loggers.values():
            if images_due(logger.image_every, step):
                logger.groups(tag, targets, samples, step, max_rows)

    def close(self) -> None:
        for logger in self.loggers.values():
            logger.close()
