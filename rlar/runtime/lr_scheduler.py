"""Learning-rate schedules of the ``scheduler`` config group: ``torch.optim.lr_scheduler.LambdaLR`` with a
closed-form multiplier of the base lr, stepped once per RL iteration (``rlar.loop.iteration``)."""

from __future__ import annotations

import math
from dataclasses import dataclass

from torch.optim import Optimizer
from torch.optim.lr_scheduler import LambdaLR


@dataclass
class WarmupCosine:
    """The lr multiplier of scheduler step ``step`` (0 during iteration 1): linear warm-up ``(step + 1) /
    warmup_steps`` over the first ``warmup_steps`` steps, then 1, or with ``total_steps`` a cosine from 1 down to
    ``min_lr_ratio`` at step ``total_steps`` (and ``min_lr_ratio`` after it).

    Its fields are ``LambdaLR``'s saved state of the multiplier: a resumed run keeps the schedule it started with.
    """

    warmup_steps: int = 0
    total_steps: int | None = None
    min_lr_ratio: float = 0.0

    def __call__(self, step: int) -> float:
        if step < self.warmup_steps:
            return (step + 1) / self.warmup_steps
        if self.total_steps is None:
            return 1.0
        # a schedule of no iterations (train.iterations=0: an evaluation of the prior) is never stepped
        progress = min(1.0, (step - self.warmup_steps) / max(self.total_steps - self.warmup_steps, 1))
        return self.min_lr_ratio + (1.0 - self.min_lr_ratio) * 0.5 * (1.0 + math.cos(math.pi * progress))


def constant(optimizer: Optimizer) -> LambdaLR:
    """The optimizer's lr throughout (multiplier 1: the lr is the optimizer's, bit for bit)."""
    return LambdaLR(optimizer, WarmupCosine())


def warmup_linear(optimizer: Optimizer, warmup_steps: int = 10) -> LambdaLR:
    """Linear warm-up over ``warmup_steps`` iterations (lr/warmup_steps in the first), then the optimizer's lr."""
    if warmup_steps < 0:
        raise ValueError(f"scheduler.warmup_steps must be >= 0, got {warmup_steps}")
    return LambdaLR(optimizer, WarmupCosine(warmup_steps))


def cosine(optimizer: Optimizer, total_steps: int, warmup_steps: int = 0, min_lr_ratio: float = 0.0) -> LambdaLR:
    """Linear warm-up over ``warmup_steps`` iterations, then a cosine decay to ``min_lr_ratio`` times the lr,
    reached after ``total_steps`` iterations (``train.iterations``; 0: a run that only evaluates the prior)."""
    if warmup_steps < 0 or 0 < total_steps <= warmup_steps or total_steps < 0:
        raise ValueError(f"scheduler.warmup_steps={warmup_steps} must be >= 0 and below scheduler.total_steps="
                         f"{total_steps} (train.iterations): leave iterations to decay over")
    if not 0.0 <= min_lr_ratio <= 1.0:
        raise ValueError(f"scheduler.min_lr_ratio must be in [0, 1], got {min_lr_ratio}")
    return LambdaLR(optimizer, WarmupCosine(warmup_steps, total_steps, min_lr_ratio))
