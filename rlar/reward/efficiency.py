"""Efficiency reward: fewer decoding steps per sample score higher (for rollouts whose schedule is the action).

``reward = clamp((max_steps - steps) / (max_steps - target), 0, 1)``: 1 at or below ``target`` steps, falling
linearly to 0 at ``max_steps`` and staying 0 beyond. The steps come from the rollout as ``meta["steps"]``.
"""

from __future__ import annotations

import torch

from rlar.contracts import Reward


def efficiency(steps: torch.Tensor, target: float, max_steps: float) -> torch.Tensor:
    """``[N]`` steps -> ``[N]`` scores in [0, 1] (NaN stays NaN)."""
    return ((max_steps - steps.float()) / (max_steps - target)).clamp(0, 1)


class EfficiencyReward(Reward):
    """``reward(images, targets, meta) -> (efficiency [N], {"efficiency": [N]})``; reads ``meta["steps"]``."""

    reads_steps = True

    def __init__(self, target: int = 8, max_steps: int = 64):
        if not 0 <= target < max_steps:
            raise ValueError(f"reward.target={target} and reward.max_steps={max_steps} must satisfy "
                             "0 <= target < max_steps; set reward.max_steps (reward=efficiency reads "
                             "schedule.max_steps) above reward.target")
        self.target = target
        self.max_steps = max_steps

    def __call__(self, images: torch.Tensor, targets: torch.Tensor | None = None, meta: dict | None = None):
        if not meta or meta.get("steps") is None:
            raise ValueError("reward=efficiency needs the number of decoding steps per sample, meta['steps'], and "
                           f"this rollout reports none (meta keys: {sorted(meta or {})}); use it with a rollout "
                           "that reports steps, e.g. the ARPG schedule rollout")
        n = images.shape[0]
        steps = torch.as_tensor(meta["steps"], device=images.device).flatten()  # [N] or [1]
        if steps.numel() not in (1, n):
            raise ValueError(f"meta['steps'] must be one number or one per sample ({n}), got {steps.numel()}")
        reward = efficiency(steps.expand(n), self.target, self.max_steps)  # [N]
        return reward, {"efficiency": reward}
