"""REINFORCE and GRPO: the same update skeleton (rlar.algorithm.update), different advantage and loss."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from rlar.algorithm.advantages import SCALES, group_advantages, standardized_advantages
from rlar.algorithm.losses import AGGREGATIONS, clipped_surrogate, reinforce_loss


@dataclass
class GRPO:
    """Group-relative advantages and a per-token PPO-clip loss (``epochs`` passes over the rollout)."""

    num_generations: int = 8
    clip_eps: float = 0.2
    scale: str = "group"  # std over the group | batch | none (Dr. GRPO)
    adv_clip: float | None = 5.0
    aggregation: str = "token"  # token | sequence
    epochs: int = 1
    minibatch_size: int = 64  # sequences per optimizer step; a multiple of num_generations

    def __post_init__(self):
        if self.num_generations < 2:
            raise ValueError(
                f"GRPO needs at least 2 generations per item to form a group, got algorithm.num_generations="
                f"{self.num_generations}; set algorithm.num_generations>=2 or use algorithm=reinforce"
            )
        if self.scale not in SCALES:
            raise ValueError(f"algorithm.scale must be one of {SCALES}, got {self.scale!r}")
        if self.aggregation not in AGGREGATIONS:
            raise ValueError(f"algorithm.aggregation must be one of {AGGREGATIONS}, got {self.aggregation!r}")
        if self.minibatch_size % self.num_generations:
            raise ValueError(
                f"algorithm.minibatch_size={self.minibatch_size} must be a multiple of algorithm.num_generations="
                f"{self.num_generations} so that a group stays in one minibatch"
            )

    def advantages(self, rewards: torch.Tensor) -> tuple[torch.Tensor, dict[str, float]]:
        return group_advantages(rewards, self.num_generations, scale=self.scale, clip=self.adv_clip)

    def loss(self, logp, old_logp, adv, mask):
        return clipped_surrogate(logp, old_logp, adv, mask, self.clip_eps, self.aggregation)


@dataclass
class Reinforce:
    """REINFORCE with a batch-mean baseline and standardized advantages; one on-policy pass."""

    num_generations: int = 4
    minibatch_size: int = 64
    epochs: int = 1

    def __post_init__(self):
        if self.num_generations < 1:
            raise ValueError(f"algorithm.num_generations must be >= 1, got {self.num_generations}")
        if self.epochs != 1:
            raise ValueError(f"REINFORCE is on-policy: algorithm.epochs must be 1, got {self.epochs}")
        if self.minibatch_size % self.num_generations:
            raise ValueError(
                f"algorithm.minibatch_size={self.minibatch_size} must be a multiple of algorithm.num_generations="
                f"{self.num_generations}"
            )

    def advantages(self, rewards: torch.Tensor) -> tuple[torch.Tensor, dict[str, float]]:
        return standardized_advantages(rewards)

    def loss(self, logp, old_logp, adv, mask):
        return reinforce_loss(logp, adv, mask)
