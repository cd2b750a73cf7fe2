"""Attention masks over padded condition tokens (text conditions read as a prefix).

A padded caption token is seen by no other position; it sees itself (so that its attention row is not empty) and
the positions before it. This is LlamaGen-T2I's mask: causal, the padded condition columns cleared, the diagonal set.
Class conditions have no padding: their policies keep the plain causal paths (masks are None there).
"""

from __future__ import annotations

import torch


def key_valid(mask: torch.Tensor, total: int) -> torch.Tensor:
    """``[N, total]`` bool: the condition ``mask [N, L]`` followed by True for every later position."""
    n, length = mask.shape
    return torch.cat([mask, torch.ones(n, total - length, dtype=torch.bool, device=mask.device)], dim=1)


def attention_mask(valid: torch.Tensor, start: int, length: int) -> torch.Tensor:
    """``[N, 1, length, end]`` bool (True = attend) for queries at positions ``start..start+length-1`` over keys
    ``0..end-1``, ``valid [N, end]`` saying which keys are not padding."""
    end = valid.shape[1]
    keys = torch.arange(end, device=valid.device)
    queries = torch.arange(start, start + length, device=valid.device)
    causal = keys[None, :] <= queries[:, None]  # [length, end]
    itself = keys[None, :] == queries[:, None]
    return (causal[None] & (valid[:, None, :] | itself[None]))[:, None]
