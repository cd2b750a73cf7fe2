"""The schedule policy network: from the frozen ARPG's state at a decoding step to a parallel degree
(how many positions to decode now) and a score for every position (which ones)."""

from __future__ import annotations

import torch
from torch import nn

UNCERTAINTY_FEATURES = 4  # per position: entropy, max probability, and both standardized (rlar.schedule.state)


class ScheduleNet(nn.Module):
    """Two heads over one step state.

    Inputs: ``pooled [M, D]`` (the ARPG's query states averaged over the pending positions), ``progress
    [M, 2]`` (step index / step cap, fraction decoded), ``uncertainty [M, T, 4]`` (entropy / log V and max
    probability of each position's token distribution, and both z-scored over the pending positions). Outputs:
    ``degree_logits [M, K]`` over k = 1..K and ``scores [M, T]``, the Plackett–Luce scores of the positions. Both
    heads start at zero: uniform degrees and a uniformly random order, ARPG's own.
    """

    def __init__(self, state_dim: int, seq_len: int, max_degree: int, hidden: int = 64):
        super().__init__()
        self.context = nn.Sequential(nn.LayerNorm(state_dim + 2), nn.Linear(state_dim + 2, hidden), nn.SiLU(),
                                     nn.Linear(hidden, hidden), nn.SiLU())
        self.degree = nn.Linear(hidden, max_degree)
        self.position = nn.Parameter(torch.randn(seq_len, hidden) * 0.1)  # a learned embedding per position
        self.uncertainty = nn.Linear(UNCERTAINTY_FEATURES, hidden)
        self.score = nn.Sequential(nn.SiLU(), nn.Linear(hidden, 1))
        for head in (self.degree, self.score[1]):
            nn.init.zeros_(head.weight)
            nn.init.zeros_(head.bias)

    @property
    def max_degree(self) -> int:
        return self.degree.out_features

    def forward(self, pooled: torch.Tensor, progress: torch.Tensor, uncertainty: torch.Tensor
                ) -> tuple[torch.Tensor, torch.Tensor]:
        c = self.context(torch.cat([pooled, progress], dim=-1))  # [M, H]
        h = c[:, None] + self.position + self.uncertainty(uncertainty)  # [M, T, H]
        return self.degree(c), self.score(h)[..., 0]


def degree_logprob(logits: torch.Tensor, remaining: torch.Tensor, degree: torch.Tensor
                   ) -> tuple[torch.Tensor, torch.Tensor]:
    """``(log P(degree), entropy)`` ``[M]`` of the categorical over k = 1..K with ``logits [M, K]``, masked to
    ``k <= remaining [M]`` positions. ``degree [M]`` beyond K (a forced last step) reads k = K: mask those rows."""
    k = torch.arange(1, logits.shape[1] + 1, device=logits.device)
    allowed = (k[None] <= remaining[:, None]) | (k[None] == 1)  # [M, K]; k = 1 keeps finished rows finite
    logp = torch.log_softmax(logits.float().masked_fill(~allowed, float("-inf")), dim=-1)  # [M, K]
    entropy = -(logp.exp() * logp.masked_fill(~allowed, 0.0)).sum(-1)  # 0 * -inf never enters the backward
    return logp.gather(1, (degree.clamp(1, logits.shape[1]) - 1)[:, None])[:, 0], entropy
