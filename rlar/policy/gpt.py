"""A conditional minGPT over codebook indices, with a KV cache.

Layout of taming-transformers' ``mingpt.GPT`` (token embedding ``tok_emb``, learned position embedding
``pos_emb``, pre-LayerNorm blocks with ``attn.{key,query,value,proj}`` and ``mlp.{0,2}``, ``ln_f``, a bias-free
``head``), plus the condition (``rlar.policy.conditioning``):

- class labels (``caption_dim`` None): a class-token embedding ``cls_emb`` with one extra row, the null class used
  for classifier-free guidance and for unconditional sampling. The model reads ``[class, z_0, ..., z_{T-2}]``.
- text (``caption_dim`` E): the caption's L feature vectors projected to the model width (``caption``, LlamaGen-T2I's
  caption embedder with its learned null caption) plus a learned ``cond_pos_emb``, read as L prefix tokens
  ``[c_1, ..., c_L, z_0, ..., z_{T-2}]``, padded caption tokens masked (``rlar.policy.condition_mask``).
- ``condition_mode="cross_attention"``: the sequence starts with a learned start token ``sos_emb`` and every block
  attends over the condition tokens (the class row or the projected caption) through a cross-attention layer.

``logits[:, t]`` predicts ``z_t`` (T positions, read from the last condition token on).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from rlar.policy.attention_heads import HeadedAttention
from rlar.policy.caption_embedder import CaptionEmbedder
from rlar.policy.checkpointing import call_block, checkpoints_blocks
from rlar.policy.condition_mask import attention_mask, key_valid
from rlar.policy.conditioning import Condition, class_ids, text_condition
from rlar.policy.cross_attention import CrossAttention
from rlar.policy.static_cache import StaticKVCache, attend_at
from rlar.policy.teacher_forcing import TeacherForced

CONDITION_MODES = ("prefix", "cross_attention")


class KVCache:
    """Preallocated keys and values for every layer: ``[N, H, max_len, Dh]`` each; ``length`` positions filled."""

    def __init__(self, n_layer: int, batch: int, n_head: int, max_len: int, head_dim: int, device, dtype):
        shape = (batch, n_head, max_len, head_dim)
        self.keys = [torch.empty(shape, device=device, dtype=dtype) for _ in range(n_layer)]
        self.values = [torch.empty(shape, device=device, dtype=dtype) for _ in range(n_layer)]
        self.length = 0
        self.key_valid: torch.Tensor | None = None  # [N, max_len] bool: False at padded condition tokens (text)
        self.cross: dict = {}  # cross-attention: layer -> (keys, values, valid) of the condition tokens


class CausalSelfAttention(HeadedAttention):
    def forward(self, x: torch.Tensor, cache: KVCache | StaticKVCache | None = None, layer: int = 0,
                position: torch.Tensor | None = None, mask: torch.Tensor | None = None) -> torch.Tensor:
        """``x [N, L, D]``; with a ``position [1]`` (L = 1), the static-shape step into a ``StaticKVCache``. ``mask
        [N, 1, L, L]``: the attention mask of a whole sequence with a padded condition (None: causal); a cache holds
        its own (``key_valid``)."""
        n, length, d = x.shape  # x: [N, L, D]
        q, k, v = self._heads(self.query(x)), self._heads(self.key(x)), self._heads(self.value(x))
        dropout = self.dropout if self.training else 0.0
        if position is not None:
            y = attend_at(q, k, v, cache, layer, position)
        elif cache is None:
            if mask is None:
                y = F.scaled_dot_product_attention(q, k, v, dropout_p=dropout, is_causal=True)
            else:
                y = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, dropout_p=dropout)
        else:
            start, end = cache.length, cache.length + length
            cache.keys[layer][:, :, start:end] = k
            cache.values[layer][:, :, start:end] = v
            k, v = cache.keys[layer][:, :, :end], cache.values[layer][:, :, :end]
            # new position i (absolute start + i) may see every absolute position <= start + i
            mask = None
            if cache.key_valid is not None:  # and no padded condition token but itself
                mask = attention_mask(cache.key_valid[:, :end], start, length)
            elif length > 1:
                mask = torch.ones(length, end, dtype=torch.bool, device=x.device).tril(diagonal=start)
            y = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, dropout_p=dropout)
        y = y.transpose(1, 2).reshape(n, length, d)
        return self.proj(y)


class Block(nn.Module):
    """Pre-LayerNorm self-attention and MLP; with ``cross``, a cross-attention layer over the condition tokens
    between them (``ln_cross``, ``cross_attn``)."""

    def __init__(self, n_embd: int, n_head: int, dropout: float, cross: bool = False):
        super().__init__()
        self.ln1 = nn.LayerNorm(n_embd)
        self.ln2 = nn.LayerNorm(n_embd)
        self.attn = CausalSelfAttention(n_embd, n_head, dropout)
        self.mlp = nn.Sequential(
            nn.Linear(n_embd, 4 * n_embd), nn.GELU(), nn.Linear(4 * n_embd, n_embd), nn.Dropout(dropout)
        )
        self.ln_cross = nn.LayerNorm(n_embd) if cross else None
        self.cross_attn = CrossAttention(n_embd, n_head, dropout) if cross else None

    def forward(self, x: torch.Tensor, cache: KVCache | StaticKVCache | None = None, layer: int = 0,
                position: torch.Tensor | None = None, mask: torch.Tensor | None = None,
                memory: tuple[torch.Tensor, torch.Tensor | None] | None = None) -> torch.Tensor:
        """``memory``: the condition tokens and their mask, for cross-attention (None: none, or the cache's)."""
        x = x + self.attn(self.ln1(x), cache, layer, position, mask)
        if self.cross_attn is not None:
            x = x + self.cross_attn(self.ln_cross(x), memory, cache, layer)
        return x + self.mlp(self.ln2(x))


class GPT(TeacherForced):
    """Conditional GPT over ``vocab_size`` codes, ``block_size`` image tokens per sample.

    ``caption_dim``: None for class labels (``num_classes`` of them), else the text encoder's width E of a text
    condition of ``condition_tokens`` (L) tokens. ``condition_mode``: ``prefix`` (the condition's tokens start the
    sequence) or ``cross_attention`` (every block attends over them).
    """

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
        caption_dim: int | None = None,
        condition_tokens: int = 1,
        condition_mode: str = "prefix",
    ):
        super().__init__()
        if condition_mode not in CONDITION_MODES:
            raise ValueError(f"policy.condition_mode={condition_mode!r} is not available; choose one of "
                             f"{CONDITION_MODES}")
        if caption_dim is None and condition_tokens != 1:
            raise ValueError(f"condition_tokens={condition_tokens}: a class condition is one token")
        self.grad_checkpointing = grad_checkpointing  # checkpoint each block in the training pass
        self.vocab_size = vocab_size
        self.block_size = block_size
        self.num_classes = num_classes
        self.null_class = num_classes  # the extra row of cls_emb
        self.caption_dim, self.condition_mode = caption_dim, condition_mode
        cross = condition_mode == "cross_attention"
        # positions of the condition in the sequence: the class token, the caption's tokens, or the start token
        self.cond_len = condition_tokens if caption_dim is not None and not cross else 1
        self.sequence_len = self.cond_len + block_size - 1  # what the KV cache holds
        self.n_layer, self.n_head, self.n_embd = n_layer, n_head, n_embd
        self.tok_emb = nn.Embedding(vocab_size, n_embd)
        if caption_dim is None:
            self.cls_emb = nn.Embedding(num_classes + 1, n_embd)
        else:
            self.caption = CaptionEmbedder(caption_dim, n_embd, condition_tokens)
            self.cond_pos_emb = nn.Parameter(torch.zeros(1, condition_tokens, n_embd))
        self.pos_emb = nn.Parameter(torch.zeros(1, block_size, n_embd))
        self.drop = nn.Dropout(dropout)
        self.blocks = nn.ModuleList(Block(n_embd, n_head, dropout, cross) for _ in range(n_layer))
        self.ln_f = nn.LayerNorm(n_embd)
        self.head = nn.Linear(n_embd, vocab_size, bias=False)
        if cross:
            self.sos_emb = nn.Parameter(torch.zeros(1, 1, n_embd))
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

    def class_ids(self, labels: Condition | torch.Tensor | None, batch: int, device) -> torch.Tensor:
        """Labels ``[N]``; ``None`` or negative entries mean the null (unconditional) class."""
        return class_ids(labels, batch, self.null_class, device)

    def condition_tokens(self, condition: Condition | torch.Tensor | None, batch: int, device
                         ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """The condition as tokens ``[N, M, D]`` and which are not padding ``[N, M]`` (None: all): the class row
        (M = 1), or the projected caption with its positions (M = L)."""
        if self.caption_dim is None:
            return self.cls_emb(self.class_ids(condition, batch, device))[:, None], None
        text = text_condition(condition, batch, "this GPT")
        return self.caption(text) + self.cond_pos_emb, text.mask

    def _tokens(self, tokens: torch.Tensor, first: int) -> torch.Tensor:
        """Embeddings of image tokens ``[N, k]``, the first at row ``first`` of ``pos_emb``: ``[N, k, D]``."""
        return self.tok_emb(tokens) + self.pos_emb[:, first : first + tokens.shape[1]]

    def _start(self, condition, tokens: torch.Tensor, cache: KVCache | StaticKVCache | None = None):
        """A sequence read from its start: the condition's positions, then ``tokens [N, k]``. Returns the embeddings
        ``[N, cond_len + k, D]``, the self-attention mask of a padded caption prefix (None: causal; with a
        ``cache``, its ``key_valid`` is set instead) and the cross-attention memory (None without it)."""
        n = tokens.shape[0]
        cond, valid = self.condition_tokens(condition, n, tokens.device)  # [N, M, D], [N, M] or None
        memory = None
        if self.condition_mode == "cross_attention":
            memory, valid = (cond, valid), None
            prefix = self.sos_emb.expand(n, -1, -1) + self.pos_emb[:, :1]
        else:
            prefix = cond + self.pos_emb[:, :1] if self.caption_dim is None else cond
        x = self.drop(torch.cat([prefix, self._tokens(tokens, 1)], dim=1))
        mask = None
        if valid is not None and cache is not None:
            cache.key_valid = key_valid(valid, self.sequence_len)
        elif valid is not None:
            mask = attention_mask(key_valid(valid, x.shape[1]), 0, x.shape[1])
        return x, mask, memory

    def _trunk(self, x: torch.Tensor, cache: KVCache | None = None, mask: torch.Tensor | None = None,
               memory=None) -> torch.Tensor:
        checkpointed = checkpoints_blocks(self)
        for i, block in enumerate(self.blocks):
            x = call_block(block, x, cache, i, None, mask, memory, checkpointed=checkpointed)
        if cache is not None:
            cache.length += x.shape[1]
        return self.ln_f(x)

    def hidden_states(self, tokens: torch.Tensor, condition: Condition | torch.Tensor | None = None) -> torch.Tensor:
        """Teacher forcing: tokens ``[N, T]`` -> final hidden states ``[N, T, D]``; position t predicts token t."""
        if tokens.shape[1] > self.block_size:
            raise ValueError(f"sequence of {tokens.shape[1]} tokens exceeds block_size={self.block_size}")
        x, mask, memory = self._start(condition, tokens[:, :-1])
        return self._trunk(x, mask=mask, memory=memory)[:, self.cond_len - 1 :]

    # -- incremental decoding: the interface the shared sampler uses ---------------------------------
    def new_cache(self, batch: int, device, dtype=None) -> KVCache:
        dtype = dtype or self.tok_emb.weight.dtype
        return KVCache(self.n_layer, batch, self.n_head, self.sequence_len, self.n_embd // self.n_head, device, dtype)

    def prefill(self, condition: Condition | torch.Tensor | None, prefix: torch.Tensor, cache: KVCache
                ) -> torch.Tensor:
        """Read the condition and a prefix ``[N, k]`` (k >= 0); return logits ``[N, V]`` for token k."""
        x, _, memory = self._start(condition, prefix, cache)
        return self.head(self._trunk(x, cache, memory=memory)[:, -1])

    def step(self, token: torch.Tensor, cache: KVCache) -> torch.Tensor:
        """Append one token ``[N]``; return logits ``[N, V]`` for the next position."""
        x = self.drop(self._tokens(token[:, None], cache.length - self.cond_len + 1))
        return self.head(self._trunk(x, cache)[:, -1])

    def static_step(self, token: torch.Tensor, cache: StaticKVCache) -> torch.Tensor:
        """``step`` at fixed shapes (one graph for every position): append ``token [N]`` at ``cache.position``;
        return logits ``[N, V]`` for the next position. Leaves ``cache.position`` and ``cache.length`` as they are."""
        row = cache.position if self.cond_len == 1 else cache.position - (self.cond_len - 1)  # of pos_emb
        x = self.drop(self.tok_emb(token[:, None]) + self.pos_emb[:, row])  # [N, 1, D]
        for i, block in enumerate(self.blocks):
            x = block(x, cache, i, cache.position)
        return self.head(self.ln_f(x)[:, -1])
