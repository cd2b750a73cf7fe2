"""Policy-gradient losses over per-token log-probabilities. Each returns ``(loss, stats)``."""

from __future__ import annotations

import torch

AGGREGATIONS = ("token", "sequence")


def aggregate(per_token: torch.Tensor, mask: torch.Tensor, how: str) -> torch.Tensor:
    """Reduce ``[N, T]`` values over the masked tokens: a mean over all tokens of the batch (``token``), or the
    mean of each sequence's token mean (``sequence``)."""
    mask = mask.float()
    if how == "token":
        return (per_token * mask).sum() / mask.sum().clamp_min(1)
    if how == "sequence":
        per_seq = (per_token * mask).sum(1) / mask.sum(1).clamp_min(1)
        return per_seq.sum() / (mask.sum(1) > 0).sum().clamp_min(1)
    raise ValueError(f"loss aggregation must be one of {AGGREGATIONS}, got {how!r}")


def clipped_surrogate(
    logp: torch.Tensor, old_logp: torch.Tensor, adv: torch.Tensor, mask: torch.Tensor,
    clip_eps: float, aggregation: str = "token",
) -> tuple[torch.Tensor, dict[str, float]]:
    """PPO-clip per token: ``max(-A r, -A clip(r, 1-eps, 1+eps))`` with ``r = exp(logp - old_logp)``.

    logp, old_logp, mask: ``[N, T]``; adv: ``[N]`` (one advantage per sequence, shared by its tokens).
    """
    log_ratio = logp - old_logp
    ratio = log_ratio.exp()
    a = adv[:, None]
    loss_t = torch.maximum(-a * ratio, -a * ratio.clamp(1 - clip_eps, 1 + clip_eps))
    loss = aggregate(loss_t, mask, aggregation)
    with torch.no_grad():
        m = mask.bool()
        dev = (ratio - 1).abs()[m]
        stats = {
            "policy/ratio_max_abs_dev": float(dev.max()) if dev.numel() else 0.0,
            "policy/clipfrac": float((dev > clip_eps).float().mean()) if dev.numel() else 0.0,
            "policy/approx_kl": float(((ratio - 1) - log_ratio)[m].mean()) if dev.numel() else 0.0,
        }
    return loss, stats


def reinforce_loss(logp: torch.Tensor, adv: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, dict[str, float]]:
    """REINFORCE: ``-mean_n(A_n * sum_t logp_{n,t})`` over the masked tokens of each sequence."""
    loss = -(adv * (logp * mask.float()).sum(1)).mean()
    return loss, {}
