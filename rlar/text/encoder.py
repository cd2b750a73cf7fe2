"""The text-encoder contract: captions -> left-padded caption features ``[N, L, E]`` and their mask ``[N, L]``."""

from __future__ import annotations

import torch
from torch import nn

from rlar.policy.conditioning import Condition


def left_pad(rows: list[torch.Tensor], length: int, device) -> tuple[torch.Tensor, torch.Tensor]:
    """Caption features of one caption each, ``[l_i, E]`` (l_i <= length), placed at the end of ``length`` slots:
    ``(features [N, length, E] fp32, zeros at padding; mask [N, length] bool)``."""
    width = rows[0].shape[-1]
    features = torch.zeros(len(rows), length, width, device=device)
    mask = torch.zeros(len(rows), length, dtype=torch.bool, device=device)
    for i, row in enumerate(rows):
        if len(row):
            features[i, length - len(row):] = row.to(device, torch.float32)
            mask[i, length - len(row):] = True
    return features, mask


class TextEncoder(nn.Module):
    """Captions -> ``(features [N, L, E], mask [N, L])``: ``L = max_length`` slots, the caption's tokens last (left
    padding, zeros), ``E = dim``. ``trainable``: trained together with the prior (the embedded encoder), else frozen;
    every encoder is frozen during RL. ``spec()``: what identifies the features it gives (a prior's cache key)."""

    dim: int
    max_length: int
    trainable: bool = False

    def encode(self, captions: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
        raise NotImplementedError

    def spec(self) -> dict:
        raise NotImplementedError

    def condition(self, captions: list[str], labels: torch.Tensor | None = None) -> Condition:
        """The text condition of ``captions`` (no row null), carrying ``labels [N]`` if given."""
        text, mask = self.encode(captions)
        return Condition(labels, text, mask, torch.zeros(len(captions), dtype=torch.bool, device=text.device))
