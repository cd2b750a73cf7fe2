"""Per-condition reward statistics (per class or per image), saved in checkpoints."""

from __future__ import annotations

import torch


class ConditionStats:
    """Running mean and std of the rewards seen for each condition key: of all of them, or with ``buffer_size`` of
    the key's last ``buffer_size`` (DDPO's per-prompt window, which follows a reward that rises as the policy learns).

    A key with fewer than ``min_count`` rewards falls back to the statistics of the current batch. A batch holding
    more than ``buffer_size`` rewards of one key is measured against all of them (the window widened for that batch,
    then cut back to its last ``buffer_size``): every sample is in its own baseline, never standardized by statistics
    of other samples alone (tied ones would give a std of 0).
    """

    def __init__(self, min_count: int = 16, buffer_size: int | None = None):
        if buffer_size is not None and buffer_size < 1:
            raise ValueError(f"a window of per-condition rewards holds at least 1, got buffer_size={buffer_size}")
        self.min_count = min_count
        self.buffer_size = buffer_size
        self.count: dict[int, int] = {}
        self.total: dict[int, float] = {}
        self.total_sq: dict[int, float] = {}
        self.recent: dict[int, list[float]] = {}  # with buffer_size: each key's last rewards, oldest first

    def update(self, keys: torch.Tensor, rewards: torch.Tensor) -> None:
        """Add finite ``rewards [N]`` under their ``keys [N]``."""
        added: dict[int, list[float]] = {}  # key -> this batch's finite rewards
        for key, r in zip(keys.tolist(), rewards.tolist(), strict=True):
            if r == r and abs(r) != float("inf"):
                added.setdefault(key, []).append(r)
        for key, batch in added.items():
            if self.buffer_size is None:
                for r in batch:
                    self.count[key] = self.count.get(key, 0) + 1
                    self.total[key] = self.total.get(key, 0.0) + r
                    self.total_sq[key] = self.total_sq.get(key, 0.0) + r * r
                continue
            window = [*self.recent.get(key, []), *batch][-max(self.buffer_size, len(batch)):]  # oldest first
            self.recent[key] = window[-self.buffer_size:]
            self.count[key] = len(window)
            self.total[key] = sum(window)
            self.total_sq[key] = sum(x * x for x in window)

    def mean_std(self, keys: torch.Tensor, rewards: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Per-item baseline mean and std ``[N]``: the key's running statistics, or the batch's."""
        finite = rewards[rewards.isfinite()]
        batch_mean = float(finite.mean()) if finite.numel() else 0.0
        batch_std = float(finite.std()) if finite.numel() > 1 else 1.0
        means, stds = [], []
        for key in keys.tolist():
            n = self.count.get(key, 0)
            if n and n >= self.min_count:
                mean = self.total[key] / n
                var = max(self.total_sq[key] / n - mean * mean, 0.0) * n / max(n - 1, 1)  # unbiased
                means.append(mean)
                stds.append(var**0.5)
            else:
                means.append(batch_mean)
                stds.append(batch_std)
        return rewards.new_tensor(means), rewards.new_tensor(stds)

    def state_dict(self) -> dict:
        state = {"min_count": self.min_count, "count": dict(self.count), "total": dict(self.total),
                 "total_sq": dict(self.total_sq)}
        if self.buffer_size is not None:
            state |= {"buffer_size": self.buffer_size, "recent": {k: list(v) for k, v in self.recent.items()}}
        return state

    def load_state_dict(self, state: dict) -> None:
        if state.get("buffer_size") != self.buffer_size:
            raise ValueError(f"the checkpoint's per-condition statistics keep algorithm.buffer_size="
                             f"{state.get('buffer_size')}, this run {self.buffer_size}: resume with the same value")
        self.min_count = state["min_count"]
        self.count, self.total, self.total_sq = dict(state["count"]), dict(state["total"]), dict(state["total_sq"])
        self.recent = {k: list(v) for k, v in state.get("recent", {}).items()}
