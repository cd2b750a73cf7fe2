"""Cross-attention to the condition tokens (``policy.condition_mode=cross_attention`` of the GPT): every block's
image positions attend over the condition's tokens (the class row, or the projected caption), whose keys and values
a KV-cached decode computes once, at prefill."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from rlar.policy.attention_heads import HeadedAttention


class CrossAttention(HeadedAttention):
    def forward(self, x: torch.Tensor, memory: tuple[torch.Tensor, torch.Tensor | None] | None, cache=None,
                layer: int = 0) -> torch.Tensor:
        """``x [N, L, D]`` attends over ``memory = (condition tokens [N, M, D], valid [N, M] bool or None)``. With
        a ``cache``, the memory's keys and values are stored in ``cache.cross[layer]`` (prefill) and read from there
        when ``memory`` is None (decode steps)."""
        n, length, d = x.shape
        q = self._heads(self.query(x))
        if memory is not None:
            tokens, valid = memory
            k, v = self._heads(self.key(tokens)), self._heads(self.value(tokens))
            if cache is not None:
                cache.cross[layer] = (k, v, valid)
        else:
            k, v, valid = cache.cross[layer]
        mask = None if valid is None else valid[:, None, None, :]  # [N, 1, 1, M]
        y = F.scaled_dot_product_attention(q, k.type_as(q), v.type_as(q), attn_mask=mask,
                                           dropout_p=self.dropout if self.training else 0.0)
        return self.proj(y.transpose(1, 2).reshape(n, length, d))
