"""Per-condition reward statistics (per class or per image), saved in checkpoints."""

from __future__ import annotations

import torch


class ConditionStats:
    """Running mean and std of the rewards seen for each condition key.

    A key with fewer than ``min_count`` rewards falls back to the statistics of the current batch.
    """

    def __init__(self, min_count: int = 16):
        self.min_count = min_count
        self.count: dict[int, int] = {}
        self.total: dict[int, float] = {}
        self.total_sq: dict[int, float] = {}

    def update(self, keys: torch.Tensor, rewards: torch.Tensor) -> None:
        """Add finite ``rewards [N]`` under their ``keys [N]``."""
        for key, r in zip(keys.tolist(), rewards.tolist(), strict=True):
            if r == r and abs(r) != float("inf"):
                self.count[key] = self.count.get(key, 0) + 1
                self.total[key] = self.total.get(key, 0.0) + r
                self.total_sq[key] = self.total_sq.get(key, 0.0) + r * r

    def mean_std(self, keys: torch.Tensor, rewards: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Per-item baseline mean and std ``[N]``: the key's running statistics, or the batch's."""
        finite = rewards[rewards.isfinite()]
        batch_mean = float(finite.mean()) if finite.numel() else 0.0
        batch_std = float(finite.std()) if finite.numel() > 1 else 1.0
        means, stds = [], []
        for key in keys.tolist():
            n = self.count.get(key, 0)
            if n >= self.min_count:
                mean = self.total[key] / n
                var = max(self.total_sq[key] / n - mean * mean, 0.0) * n / max(n - 1, 1)  # unbiased
                means.append(mean)
                stds.append(var**0.5)
            else:
                means.append(batch_mean)
                stds.append(batch_std)
        return rewards.new_tensor(means), rewards.new_tensor(stds)

    def state_dict(self) -> dict:
        return {"min_count": self.min_count, "count": dict(self.count), "total": dict(self.total),
                "total_sq": dict(self.total_sq)}

    def load_state_dict(self, state: dict) -> None:
        self.min_count = state["min_count"]
        self.count, self.total, self.total_sq = dict(state["count"]), dict(state["total"]), dict(state["total_sq"])
