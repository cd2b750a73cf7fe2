"""A static-shape KV cache: one decode step has the same shapes at every position (torch.compile, CUDA graphs).

The eager cache (``rlar.policy.gpt.KVCache``) attends over its filled slice ``[:, :, :length]``, one slot
longer at every step. Here a step writes its key and value in place at ``position`` (a tensor, not a Python int)
and attends over all ``max_len`` slots, with a mask hiding the slots after ``position``. A masked slot adds exactly
nothing only while it is finite (NaN plus the mask's -inf is NaN): slots start at zero and are zeroed again when a
cache is reused (:meth:`StaticKVCache.reset`), so that a rollout that overflowed leaves nothing in the next.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


class StaticKVCache:
    """Keys and values ``[N, H, max_len, Dh]`` per layer, zeros at first, and ``length`` positions filled, like the
    eager cache (``prefill`` fills both the same way); plus ``position [1]``, the slot the next step writes, and
    ``slots [max_len]`` (``0..max_len-1``) for the visibility mask."""

    def __init__(self, n_layer: int, batch: int, n_head: int, max_len: int, head_dim: int, device, dtype):
        shape = (batch, n_head, max_len, head_dim)
        self.keys = [torch.zeros(shape, device=device, dtype=dtype) for _ in range(n_layer)]
        self.values = [torch.zeros(shape, device=device, dtype=dtype) for _ in range(n_layer)]
        self.length = 0
        self.position = torch.zeros(1, dtype=torch.long, device=device)
        self.slots = torch.arange(max_len, device=device)
        self.key_valid: torch.Tensor | None = None  # [N, max_len] bool: False at padded condition tokens (text)
        self.cross: dict = {}  # cross-attention: layer -> (keys, values, valid) of the condition tokens

    def reset(self) -> None:
        """Empty the cache for a new rollout: keys and values zeroed in place (the same addresses, which a CUDA graph
        reads), ``length`` 0."""
        for tensor in (*self.keys, *self.values):
            tensor.zero_()
        self.length = 0

    def tensors(self) -> list[torch.Tensor]:
        return [*self.keys, *self.values, self.position, self.slots]


def attend_at(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, cache: StaticKVCache, layer: int,
              position: torch.Tensor) -> torch.Tensor:
    """One new position: write ``k``, ``v`` ``[N, H, 1, Dh]`` at ``position [1]`` of ``layer``'s cache; ``q [N, H, 1,
    Dh]`` attends over every slot ``<= position`` that is not a padded condition token. Returns ``[N, H, 1, Dh]``."""
    keys, values = cache.keys[layer], cache.values[layer]  # [N, H, max_len, Dh]
    keys.index_copy_(2, position, k.to(keys.dtype))
    values.index_copy_(2, position, v.to(values.dtype))
    visible = (cache.slots <= position)[None]  # [1, max_len], broadcast over [N, H, 1, max_len]
    if cache.key_valid is not None:
        visible = (visible & cache.key_valid)[:, None, None]  # [N, 1, 1, max_len]
    return F.scaled_dot_product_attention(q, keys, values, attn_mask=visible)
