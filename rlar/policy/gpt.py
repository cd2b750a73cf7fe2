"""A class-conditional minGPT over codebook indices, with a KV cache.

Layout of taming-transformers' ``mingpt.GPT`` (token embedding ``tok_emb``, learned position embedding
``pos_emb``, pre-LayerNorm blocks with ``attn.{key,query,value,proj}`` and ``mlp.{0,2}``, ``ln_f``, a bias-free
``head``), plus a class-token embedding ``cls_emb`` with one extra row, the null class used for
classifier-free guidance and for unconditional sampling.

The model reads ``[class, z_0, ..., z_{T-2}]`` (T positions) and ``logits[:, t]`` predicts ``z_t``.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from rlar.policy.checkpointing import call_block, checkpoints_blocks
from rlar.policy.conditioning import class_ids
from rlar.policy.static_cache import StaticKVCache, attend_at
from rlar.policy.teacher_forcing import TeacherForced


class KVCache:
    """Preallocated keys and values for every layer: ``[N, H, max_len, Dh]`` each; ``length`` positions filled."""

    def __init__(self, n_layer: int, batch: int, n_head: int, max_len: int, head_dim: int, device, dtype):
        shape = (batch, n_head, max_len, head_dim)
        self.keys = [torch.empty(shape, device=device, dtype=dtype) for _ in range(n_layer)]
        self.values = [torch.empty(shape, device=device, dtype=dtype) for _ in range(n_layer)]
        self.length = 0


class CausalSelfAttention(nn.Module):
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

    def forward(self, x: torch.Tensor, cache: KVCache | StaticKVCache | None = None, layer: int = 0,
                position: torch.Tensor | None = None) -> torch.Tensor:
        """``x [N, L, D]``; with a ``position [1]`` (L = 1), the static-shape step into a ``StaticKVCache``."""
        n, length, d = x.shape  # x: [N, L, D]
        q, k, v = self._heads(self.query(x)), self._heads(self.key(x)), self._heads(self.value(x))
        dropout = self.dropout if self.training else 0.0
        if position is not None:
            y = attend_at(q, k, v, cache, layer, position)
        elif cache is None:
            y = F.scaled_dot_product_attention(q, k, v, dropout_p=dropout, is_causal=True)
        else:
            start, end = cache.length, cache.length + length
            cache.keys[layer][:, :, start:end] = k
            cache.values[layer][:, :, start:end] = v
            k, v = cache.keys[layer][:, :, :end], cache.values[layer][:, :, :end]
            # new position i (absolute start + i) may see every absolute position <= start + i
            mask = None
            if length > 1:
                mask = torch.ones(length, end, dtype=torch.bool, device=x.device).tril(diagonal=start)
            y = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, dropout_p=dropout)
        y = y.transpose(1, 2).reshape(n, length, d)
        return self.proj(y)


class Block(nn.Module):
    def __init__(self, n_embd: int, n_head: int, dropout: float):
        super().__init__()
        self.ln1 = nn.LayerNorm(n_embd)
        self.ln2 = nn.LayerNorm(n_embd)
        self.attn = CausalSelfAttention(n_embd, n_head, dropout)
        self.mlp = nn.Sequential(
            nn.Linear(n_embd, 4 * n_embd), nn.GELU(), nn.Linear(4 * n_embd, n_embd), nn.Dropout(dropout)
        )

    def forward(self, x: torch.Tensor, cache: KVCache | StaticKVCache | None = None, layer: int = 0,
                position: torch.Tensor | None = None) -> torch.Tensor:
        x = x + self.attn(self.ln1(x), cache, layer, position)
        return x + self.mlp(self.ln2(x))


class GPT(TeacherForced):
    """Class-conditional GPT over ``vocab_size`` codes, ``block_size`` image tokens per sample."""

    def __init__(
        self,
        vocab_size: int,
        block_size: int,
        num_classes: int = 0,
        n_layer: int = 4,
        n_head: int = 4,
        n_embd: int = 128,
        dropout: float = 0.0,
        grad_checkpointing: bool = False,
    ):
        super().__init__()
        self.grad_checkpointing = grad_checkpointing  # checkpoint each block in the training pass
        self.vocab_size = vocab_size
        self.block_size = block_size
        self.num_classes = num_classes
        self.null_class = num_classes  # the extra row of cls_emb
        self.n_layer, self.n_head, self.n_embd = n_layer, n_head, n_embd
        self.tok_emb = nn.Embedding(vocab_size, n_embd)
        self.cls_emb = nn.Embedding(num_classes + 1, n_embd)
        self.pos_emb = nn.Parameter(torch.zeros(1, block_size, n_embd))
        self.drop = nn.Dropout(dropout)
        self.blocks = nn.ModuleList(Block(n_embd, n_head, dropout) for _ in range(n_layer))
        self.ln_f = nn.LayerNorm(n_embd)
        self.head = nn.Linear(n_embd, vocab_size, bias=False)
        self.apply(self._init_weights)
        for name, p in self.named_parameters():  # GPT-2 scaled init of residual projections
            if name.endswith("attn.proj.weight") or name.endswith("mlp.2.weight"):
                nn.init.normal_(p, std=0.02 / math.sqrt(2 * n_layer))

    @staticmethod
    def _init_weights(module: nn.Module) -> None:
        if isinstance(module, (nn.Linear, nn.Embedding)):
            nn.init.normal_(module.weight, std=0.02)
        if isinstance(module, nn.Linear) and module.bias is not None:
            nn.init.zeros_(module.bias)

    def class_ids(self, labels: torch.Tensor | None, batch: int, device) -> torch.Tensor:
        """Labels ``[N]``; ``None`` or negative entries mean the null (unconditional) class."""
        return class_ids(labels, batch, self.null_class, device)

    def _embed(self, labels: torch.Tensor | None, tokens: torch.Tensor, start: int) -> torch.Tensor:
        """Embeddings of sequence positions ``start..``: the class token at position 0, then ``tokens``."""
        x = self.tok_emb(tokens)  # [N, L, D]
        if start == 0:
            cls = self.cls_emb(self.class_ids(labels, tokens.shape[0], tokens.device))[:, None]
            x = torch.cat([cls, x], dim=1)
        return self.drop(x + self.pos_emb[:, start : start + x.shape[1]])

    def _trunk(self, x: torch.Tensor, cache: KVCache | None = None) -> torch.Tensor:
        checkpointed = checkpoints_blocks(self)
        for i, block in enumerate(self.blocks):
            x = call_block(block, x, cache, i, checkpointed=checkpointed)
        if cache is not None:
            cache.length += x.shape[1]
        return self.ln_f(x)

    def hidden_states(self, tokens: torch.Tensor, labels: torch.Tensor | None = None) -> torch.Tensor:
        """Teacher forcing: tokens ``[N, T]`` -> final hidden states ``[N, T, D]``; position t predicts token t."""
        if tokens.shape[1] > self.block_size:
            raise ValueError(f"sequence of {tokens.shape[1]} tokens exceeds block_size={self.block_size}")
        return self._trunk(self._embed(labels, tokens[:, :-1], start=0))

    # -- incremental decoding: the interface the shared sampler uses ---------------------------------
    def new_cache(self, batch: int, device, dtype=None) -> KVCache:
        dtype = dtype or self.tok_emb.weight.dtype
        return KVCache(self.n_layer, batch, self.n_head, self.block_size, self.n_embd // self.n_head, device, dtype)

    def prefill(self, labels: torch.Tensor | None, prefix: torch.Tensor, cache: KVCache) -> torch.Tensor:
        """Read the condition and a prefix ``[N, k]`` (k >= 0); return logits ``[N, V]`` for token k."""
        h = self._trunk(self._embed(labels, prefix, start=0), cache)
        return self.head(h[:, -1])

    def step(self, token: torch.Tensor, cache: KVCache) -> torch.Tensor:
        """Append one token ``[N]``; return logits ``[N, V]`` for the next position."""
        h = self._trunk(self._embed(None, token[:, None], start=cache.length), cache)
        return self.head(h[:, -1])

    def static_step(self, token: torch.Tensor, cache: StaticKVCache) -> torch.Tensor:
        """``step`` at fixed shapes (one graph for every position): append ``token [N]`` at ``cache.position``;
        return logits ``[N, V]`` for the next position. Leaves ``cache.position`` and ``cache.length`` as they are."""
        x = self.drop(self.tok_emb(token[:, None]) + self.pos_emb[:, cache.position])  # [N, 1, D]
        for i, block in enumerate(self.blocks):
            x = block(x, cache, i, cache.position)
        return self.head(self.ln_f(x)[:, -1])
