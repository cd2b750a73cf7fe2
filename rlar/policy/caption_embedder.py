"""Caption features as condition tokens: LlamaGen-T2I's caption embedder, shared by the text-conditioned GPT and
LlamaGen.

``cap_proj``: a bias-free MLP (``fc1``, tanh-approximated GELU, ``fc2``) from the text encoder's width E to the model
width D; ``uncond_embedding [L, E]``: the learned null caption, which replaces the features of the null rows (the
unconditional half of guidance, caption dropout) before the projection. The key names and shapes are those of
LlamaGen's released T2I checkpoints (``cls_embedding.cap_proj.fc1.weight`` ``[D, E]``, ``...fc2.weight`` ``[D, D]``,
``cls_embedding.uncond_embedding`` ``[120, 2048]`` for FLAN-T5-XL features).
"""

from __future__ import annotations

import torch
from torch import nn

from rlar.policy.conditioning import Condition


class CaptionMLP(nn.Module):
    def __init__(self, in_features: int, hidden_features: int, out_features: int):
        super().__init__()
        self.fc1 = nn.Linear(in_features, hidden_features, bias=False)
        self.act = nn.GELU(approximate="tanh")
        self.fc2 = nn.Linear(hidden_features, out_features, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.act(self.fc1(x)))


class CaptionEmbedder(nn.Module):
    """Caption features ``[N, L, E]`` -> condition tokens ``[N, L, D]``, null rows reading the learned null caption."""

    def __init__(self, caption_dim: int, dim: int, token_num: int):
        super().__init__()
        self.cap_proj = CaptionMLP(caption_dim, dim, dim)
        self.uncond_embedding = nn.Parameter(torch.randn(token_num, caption_dim) / caption_dim**0.5)

    def forward(self, condition: Condition) -> torch.Tensor:
        """The condition tokens ``[N, L, D]`` of a text condition (its ``mask`` is the caller's to apply)."""
        text = condition.text  # [N, L, E]
        if text.shape[1:] != self.uncond_embedding.shape:
            raise ValueError(f"caption features of shape {tuple(text.shape[1:])} (tokens, width) but the policy reads "
                             f"{tuple(self.uncond_embedding.shape)}: the text_encoder's max_length and width must be "
                             "the policy's condition tokens and caption_dim")
        null = self.uncond_embedding.to(text.dtype)
        return self.cap_proj(torch.where(condition.null[:, None, None], null, text).to(self.uncond_embedding.dtype))
