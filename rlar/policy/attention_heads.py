"""The projections every attention of the GPT has (query, key, value, output) and the split into heads."""

from __future__ import annotations

import torch
from torch import nn


class HeadedAttention(nn.Module):
    """Query, key, value and output projections of width ``n_embd`` over ``n_head`` heads; subclasses attend."""

    def __init__(self, n_embd: int, n_head: int, dropout: float):
        super().__init__()
        if n_embd % n_head:
            raise ValueError(f"n_embd={n_embd} must be divisible by n_head={n_head}")
        self.n_head = n_head
        self.key = nn.Linear(n_embd, n_embd)
        self.query = nn.Linear(n_embd, n_embd)
        self.value = nn.Linear(n_embd, n_embd)
        self.proj = nn.Linear(n_embd, n_embd)
        self.dropout = dropout

    def _heads(self, x: torch.Tensor) -> torch.Tensor:  # [N, L, D] -> [N, H, L, Dh]
        n, length, d = x.shape
        return x.view(n, length, self.n_head, d // self.n_head).transpose(1, 2)
