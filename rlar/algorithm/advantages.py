"""Advantage estimation: pure functions of rewards and groups. Non-finite rewards (NaN, +-inf) are excluded, never
used."""

from __future__ import annotations

from collections.abc import Callable

import torch

SCALES = ("group", "batch", "none")
TIED = 1e-8  # a group whose rewards' std is at most this has no signal (adv/frac_zero_std), whatever the eps


def _nan_std(x: torch.Tensor, dim: int | None = None, keepdim: bool = False) -> torch.Tensor:
    """Unbiased standard deviation ignoring NaN (0 where fewer than two values)."""
    valid = ~x.isnan()
    count = valid.sum(dim=dim, keepdim=True) if dim is not None else valid.sum()
    mean = x.nanmean(dim=dim, keepdim=True) if dim is not None else x.nanmean()
    var = torch.where(valid, (x - mean) ** 2, 0.0).sum(dim=dim, keepdim=True if dim is not None else False)
    std = (var / (count - 1).clamp_min(1)).sqrt()
    return std if keepdim or dim is None else std.squeeze(dim)


def grouped(rewards: torch.Tensor, group_size: int, keys: torch.Tensor | None = None
            ) -> tuple[torch.Tensor, Callable[[torch.Tensor], torch.Tensor]]:
    """``rewards [N]`` laid out one group per row, ``(r [K, M], back)``: the G = ``group_size`` adjacent generations of
    an item (``[N / G, G]``), or with ``keys [N]`` every reward of one key (a row per distinct key, padded with NaN to
    the largest group); a non-finite reward is NaN, the dtype is the rewards'. ``back`` takes a ``[K, M]`` of the same
    layout back to ``[N]``."""
    r = torch.where(rewards.isfinite(), rewards, torch.nan)  # an inf is as unscored as a NaN
    if keys is None:
        if rewards.numel() % group_size:
            raise ValueError(f"{rewards.numel()} rewards do not split into groups of {group_size}")
        return r.view(-1, group_size), lambda x: x.reshape(-1)
    _, row = torch.unique(keys, return_inverse=True)  # [N]: each reward's group
    order = torch.argsort(row, stable=True)
    sizes = torch.bincount(row)  # [K]
    col = torch.empty_like(row)
    col[order] = torch.arange(len(row), device=row.device) - (sizes.cumsum(0) - sizes)[row[order]]  # place in group
    padded = r.new_full((len(sizes), int(sizes.max())), torch.nan)  # [K, M]
    padded[row, col] = r
    return padded, lambda x: x[row, col]


def group_advantages(
    rewards: torch.Tensor, group_size: int, eps: float = 1e-8, scale: str = "group", clip: float | None = None,
    keys: torch.Tensor | None = None,
) -> tuple[torch.Tensor, dict[str, float]]:
    """GRPO advantages: ``(r - mean of its group) / (std + eps)``.

    rewards ``[N]`` with the G = ``group_size`` generations of an item adjacent; with ``keys [N]`` a group is every
    reward of one key instead (flow_grpo's per-prompt groups). ``scale`` picks the std:
    over the group, over the batch, or none (Dr. GRPO). Non-finite rewards (NaN, +-inf) get advantage 0 and are
    left out of every statistic. Returns ``(advantages [N], stats)``; stats has ``adv/frac_zero_std`` (groups whose
    rewards are all equal, or that have fewer than two finite ones: no signal) and ``reward/nonfinite_count``.
    """
    if scale not in SCALES:
        raise ValueError(f"advantage scale must be one of {SCALES}, got {scale!r}")
    r, back = grouped(rewards.float(), group_size, keys)  # [K, M]
    centered = r - r.nanmean(dim=1, keepdim=True)
    group_std = _nan_std(r, dim=1, keepdim=True)  # [K, 1]
    if scale == "group":
        adv = centered / (group_std + eps)
    elif scale == "batch":
        adv = centered / (_nan_std(r.flatten()) + eps)
    else:
        adv = centered
    if clip is not None:
        adv = adv.clamp(-clip, clip)
    adv = back(torch.nan_to_num(adv, nan=0.0))
    stats = {
        "adv/frac_zero_std": float((group_std <= TIED).float().mean()),
        "reward/nonfinite_count": float((~rewards.float().isfinite()).sum()),
    }
    return adv, stats


def leave_one_out_advantages(rewards: torch.Tensor, group_size: int, scale: str = "none", eps: float = 1e-8
                             ) -> tuple[torch.Tensor, dict[str, float]]:
    """RLOO's advantages: each reward minus the mean of the other finite rewards of its group,
    ``r_i - (sum_j r_j - r_i) / (n - 1)`` over a group's n finite rewards, so that no sample is its own baseline;
    ``scale="batch"`` divides them by the std of the batch's finite rewards (+ ``eps``), as :func:`group_advantages`
    does.

    rewards ``[N]`` with the G = ``group_size`` generations of an item adjacent. A non-finite reward, and every
    reward of a group with fewer than two finite ones, gets advantage 0. Returns ``(advantages [N], stats)`` with
    the stats of :func:`group_advantages`.
    """
    if scale not in ("batch", "none"):
        raise ValueError(f"a leave-one-out advantage's scale must be 'batch' or 'none', got {scale!r}")
    if group_size < 2:
        raise ValueError(f"a leave-one-out baseline needs groups of at least 2, got {group_size}")
    r, back = grouped(rewards.float(), group_size)  # [B, G], NaN where not finite
    finite = r.isfinite()
    count = finite.sum(1, keepdim=True)  # [B, 1]
    total = torch.where(finite, r, 0.0).sum(1, keepdim=True)  # [B, 1]
    others = (total - r) / (count - 1).clamp_min(1)  # [B, G]: the mean of the others
    adv = back(torch.where(finite & (count > 1), r - others, 0.0))
    if scale == "batch":
        adv = adv / (_nan_std(r.flatten()) + eps)
    _, stats = group_advantages(rewards, group_size)
    return adv, stats
