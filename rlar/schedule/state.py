"""What the schedule policy reads at a decoding step: the frozen ARPG's view of a partly decoded batch.

Every row has its own history (the step each position was decoded at), so the state is read from scratch in one
pass with per-row masks that give exactly the attention of ARPG's KV-cached sampler
(``rlar.rollout.parallel_decoding.sample_parallel``): Pass 1 reads the class slot and the decoded tokens, a token seeing
those of its own and earlier steps; the queries, one per grid position, see all of them. Queries never see each
other, so the query of a position gives the same distribution whichever other positions are asked with it.
"""

from __future__ import annotations

import math

import torch

from rlar.contracts import ParallelPolicy
from rlar.rollout.sampling import guided_logprobs, with_null_class

PENDING = 1 << 30  # ``decoded_at`` of a position not decoded yet: after every real step, so nothing sees it


@torch.no_grad()
def read_state(arpg: ParallelPolicy, labels: torch.Tensor | None, tokens: torch.Tensor, decoded_at: torch.Tensor,
               cfg_scale: float, temperature: float) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The state of ``N`` rows of ``tokens [N, T]`` (raster) whose position p was decoded at step
    ``decoded_at[:, p]`` (``[N, T]`` long; :data:`PENDING` if not yet). Returns, cloned out of inference mode:
    ``logp [N, T, V]`` (every position's token distribution: guided, tempered, fp32), ``pooled [N, D]`` (the
    queries' final states averaged over the pending positions) and ``uncertainty [N, T, 4]`` (entropy / log V and
    max probability, then both z-scored over the row's pending positions)."""
    n, seq_len = tokens.shape
    device = tokens.device
    pending = decoded_at == PENDING  # [N, T]
    order = decoded_at.argsort(dim=1, stable=True)  # [N, T]: decoded positions first, by step
    fed = int((~pending).sum(1).max())
    step = decoded_at.gather(1, order[:, :fed])  # [N, fed]
    group = torch.cat([torch.zeros(n, 1, dtype=torch.long, device=device),
                       torch.where(step == PENDING, PENDING, step + 1)], dim=1)  # [N, L]: class slot, tokens
    self_mask = (group[:, None, :] <= group[:, :, None])[:, None]  # [N, 1, L, L]
    cross_mask = (group < PENDING)[:, None, None, :].expand(n, 1, seq_len, fed + 1)  # [N, 1, T, L]
    guided = cfg_scale != 1
    rows_n = 2 * n if guided else n
    doubled = (lambda x: torch.cat([x, x])) if guided else (lambda x: x)
    class_ids = arpg.class_ids(with_null_class(labels, n, device) if guided else labels, rows_n, device)
    ids = torch.cat([class_ids[:, None], doubled(tokens.gather(1, order[:, :fed]))], dim=1)  # [N or 2N, L]
    rows = doubled(torch.cat([torch.zeros_like(order[:, :1]), 1 + order[:, :fed]], dim=1))
    query_rows = 1 + torch.arange(seq_len, device=device).expand(rows_n, seq_len)
    with torch.inference_mode():
        logits, states = arpg.query(ids, rows, query_rows, doubled(self_mask), doubled(cross_mask))
        logp = guided_logprobs(logits, cfg_scale, temperature, doubled=guided)  # [N, T, V]
        probs = logp.exp()
        entropy = -(probs * logp).sum(-1) / math.log(logp.shape[-1])  # [N, T]
        weight = pending.float()[..., None]  # [N, T, 1]
        pooled = (states[:n].float() * weight).sum(1) / weight.sum(1).clamp_min(1)
        raw = torch.stack([entropy, probs.amax(-1)], dim=-1)  # [N, T, 2]
        uncertainty = torch.cat([raw, standardized(raw, pending)], dim=-1)
    return logp.clone(), pooled.clone(), uncertainty.clone()


def standardized(x: torch.Tensor, pending: torch.Tensor) -> torch.Tensor:
    """``x [N, T, F]`` z-scored over each row's pending positions (``pending [N, T]``): how a position compares
    with the others still open."""
    w = pending.float()[..., None]  # [N, T, 1]
    count = w.sum(1, keepdim=True).clamp_min(1)
    mean = (x * w).sum(1, keepdim=True) / count
    std = (((x - mean) ** 2 * w).sum(1, keepdim=True) / count).sqrt()
    return (x - mean) / (std + 1e-3) * w
