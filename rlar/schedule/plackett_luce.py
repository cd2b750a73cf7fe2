"""Positions drawn without replacement: Gumbel-top-k sampling and the exact Plackett–Luce log-probability.

Perturbing the scores with i.i.d. Gumbel noise and sorting draws an ordered sequence with exactly the
Plackett–Luce (sequential softmax) law: pick ``p_1`` with ``softmax(scores)``, then ``p_2`` with the softmax over
the positions left, and so on. :func:`plackett_luce_logprob` is that law's log-probability of a given ordered
draw, differentiable in the scores.
"""

from __future__ import annotations

import torch

from rlar.rollout.draws import uniforms


def gumbel_order(scores: torch.Tensor, available: torch.Tensor, generator: torch.Generator | None = None
                 ) -> torch.Tensor:
    """Every position ``[M, P]`` (long) ranked by ``scores [M, P]`` + Gumbel noise, the available ones first:
    the first ``k`` of a row are a Plackett–Luce draw of ``k`` of its ``available [M, P]`` positions."""
    uniform = uniforms(scores.shape, generator, scores.device).clamp_min(1e-20)
    keys = (scores.float() - torch.log(-torch.log(uniform))).masked_fill(~available, float("-inf"))
    return keys.argsort(dim=1, descending=True)


def plackett_luce_logprob(scores: torch.Tensor, available: torch.Tensor, picks: torch.Tensor, count: torch.Tensor
                          ) -> torch.Tensor:
    """``log P(picks[:, :count])`` ``[M]`` fp32: the first ``count [M]`` entries of ``picks [M, P]`` drawn in that
    order, without replacement, from the ``available [M, P]`` positions with probabilities ``softmax(scores)``
    renormalized over the positions not yet drawn. Rows with ``count == 0`` score 0."""
    any_left = available.any(dim=1, keepdim=True)
    # rows with nothing available only ever score 0; opening them keeps logsumexp (and its gradient) finite
    logits = scores.float().masked_fill(~(available | ~any_left), float("-inf"))  # [M, P]
    total = torch.zeros(len(scores), device=scores.device)
    for j in range(int(count.max()) if len(count) else 0):
        live = j < count  # [M]
        pick = picks[:, j : j + 1]  # [M, 1]
        chosen = logits.gather(1, pick)[:, 0]  # [M]
        total = total + torch.where(live, chosen - torch.logsumexp(logits, dim=1), 0.0)
        gone = torch.where(live, float("-inf"), chosen)[:, None]  # drawn positions leave the pool
        logits = logits.scatter(1, pick, gone)
    return total
