"""Pixel reconstruction rewards: the negative distance between a decoded sample and its target image."""

from __future__ import annotations

import torch

from rlar.contracts import Reward
from rlar.reward.mixture import zscore

KINDS = ("l2", "l1")


def pixel_distance(x: torch.Tensor, y: torch.Tensor, kind: str) -> torch.Tensor:
    """Mean squared (l2) or absolute (l1) difference per item over C, H, W: ``[N]``."""
    if kind == "l2":
        return (x - y).pow(2).flatten(1).mean(1)
    if kind == "l1":
        return (x - y).abs().flatten(1).mean(1)
    raise ValueError(f"reconstruction loss type must be one of {KINDS}, got {kind!r}")


def reconstruction_reward(x: torch.Tensor, x_rec: torch.Tensor, loss_type: str = "l2",
                          normalize: bool = False) -> torch.Tensor:
    """The seeds' reward: ``-loss(x, x_rec)`` per item ``[N]``; ``normalize`` z-scores over the batch's finite items
    (a NaN item stays NaN alone; with fewer than two finite items, 0)."""
    reward = -pixel_distance(x_rec.float(), x.float(), loss_type)
    return zscore(reward, eps=1e-8) if normalize else reward


class ReconstructionReward(Reward):
    """``reward(images, targets, meta) -> (rewards [N], {component: [N]})``, higher is better."""

    reads_targets = True

    def __init__(self, kind: str = "l2"):
        if kind not in KINDS:
            raise ValueError(f"reward.kind must be one of {KINDS}, got {kind!r}")
        self.kind = kind
        self.name = f"neg_{kind}"

    def __call__(self, images: torch.Tensor, targets: torch.Tensor, meta: dict | None = None):
        reward = reconstruction_reward(targets, images, self.kind)
        return reward, {self.name: reward}
