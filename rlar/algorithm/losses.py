"""Policy-gradient losses over per-token log-probabilities. Each returns ``(loss, stats)``."""

from __future__ import annotations

import torch

AGGREGATIONS = ("token", "sequence", "constant")
RATIO_LEVELS = ("token", "sequence")


def aggregate(per_token: torch.Tensor, mask: torch.Tensor, how: str, constant: float | None = None) -> torch.Tensor:
    """Reduce ``[N, T]`` values over the masked tokens: a mean over all tokens of the batch (``token``), the
    mean of each sequence's token mean (``sequence``), or the sum divided by ``N * constant`` (``constant``, Dr.
    GRPO's length-unbiased form; ``constant`` defaults to T)."""
    mask = mask.float()
    if how == "constant":
        return (per_token * mask).sum() / (mask.shape[0] * (constant or mask.shape[1]))
    if how == "token":
        return (per_token * mask).sum() / mask.sum().clamp_min(1)
    if how == "sequence":
        per_seq = (per_token * mask).sum(1) / mask.sum(1).clamp_min(1)
        return per_seq.sum() / (mask.sum(1) > 0).sum().clamp_min(1)
    raise ValueError(f"loss aggregation must be one of {AGGREGATIONS}, got {how!r}")


def clipped_surrogate(
    logp: torch.Tensor, old_logp: torch.Tensor, adv: torch.Tensor, mask: torch.Tensor,
    clip_eps: float, aggregation: str = "token", clip_eps_high: float | None = None, constant: float | None = None,
    level: str = "token", delta: float | None = None,
) -> tuple[torch.Tensor, dict[str, float]]:
    """PPO-clip of each token: ``max(-A r, -A clip(r, 1-eps, 1+eps_high))`` with ``r = exp(logp - old_logp)``.

    logp, old_logp, mask: ``[N, T]``; adv: ``[N]`` (one advantage per sequence, shared by its tokens) or
    ``[N, T]`` (per token, e.g. GAE). ``clip_eps_high`` defaults to ``clip_eps``. ``level="sequence"`` (GSPO): every
    token of a sequence takes the sequence's ratio, the exp of its mean log-ratio over its action tokens, clipped
    as one (its gradient is the mean of the tokens' log-prob gradients, times that ratio). ``delta``: the two-sided
    clip, the unclipped ratio capped at ``delta`` (> 1 + eps_high), which bounds the loss of a negative advantage.
    """
    if level not in RATIO_LEVELS:
        raise ValueError(f"the importance ratio's level must be one of {RATIO_LEVELS}, got {level!r}")
    high = clip_eps if clip_eps_high is None else clip_eps_high
    token_log_ratio = log_ratio = logp - old_logp  # [N, T]
    if level == "sequence":
        m = mask.float()
        per_sequence = (log_ratio * m).sum(1, keepdim=True) / m.sum(1, keepdim=True).clamp_min(1)  # [N, 1]
        log_ratio = per_sequence.expand_as(log_ratio)
    ratio = log_ratio.exp()
    a = adv[:, None] if adv.dim() == 1 else adv
    unclipped = ratio if delta is None else ratio.clamp(max=delta)
    loss_t = torch.maximum(-a * unclipped, -a * ratio.clamp(1 - clip_eps, 1 + high))
    loss = aggregate(loss_t, mask, aggregation, constant)
    with torch.no_grad():  # the deviation and the KL per token, whatever the level (a sequence's mean hides them)
        m = mask.bool()
        token_ratio = token_log_ratio.exp()
        dev = (token_ratio - 1).abs()[m]
        stats = {
            "policy/ratio_max_abs_dev": float(dev.max()) if dev.numel() else 0.0,
            "policy/clipfrac": float(((ratio < 1 - clip_eps) | (ratio > 1 + high))[m].float().mean())
            if dev.numel() else 0.0,
            "policy/approx_kl": float(((token_ratio - 1) - token_log_ratio)[m].mean()) if dev.numel() else 0.0,
        }
    return loss, stats


def reinforce_loss(logp: torch.Tensor, adv: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, dict[str, float]]:
    """REINFORCE: ``-mean_n(sum_t A_{n,t} logp_{n,t})`` over the masked tokens of each sequence; ``adv``: ``[N]`` (one
    advantage per sequence, shared by its tokens) or ``[N, T]`` (per token)."""
    masked = logp * mask.float()  # [N, T]
    per_sequence = adv * masked.sum(1) if adv.dim() == 1 else (adv * masked).sum(1)  # [N]
    return -per_sequence.mean(), {}
