"""LlamaGen's class-conditional (c2i) and text-conditional (t2i) transformer, with the state-dict layout of its
released checkpoints.

Llama-style blocks: RMSNorm pre-norms (``attention_norm``, ``ffn_norm``), attention with one fused bias-free
``wqkv`` and ``wo``, a SwiGLU ``feed_forward.{w1,w2,w3}``; ``tok_embeddings``, a class table
``cls_embedding.embedding_table`` with one extra row (the null class of classifier-free guidance), final
``norm`` and a bias-free ``output``. Positions carry no learned embedding: queries and keys are rotated by a
2D RoPE over the image grid (first half of each head by the row, second half by the column), and the condition
tokens' rotary rows are zero, which zeroes their queries and keys.

c2i reads ``[class, z_0, ..., z_{T-2}]``. t2i (``caption_dim`` set) replaces the class table by the caption embedder
``cls_embedding.cap_proj.{fc1,fc2}`` + ``cls_embedding.uncond_embedding`` (``rlar.policy.caption_embedder``) and
reads ``cls_token_num`` caption tokens (120 in the released T2I models) before the image tokens, the padded ones
masked as LlamaGen masks them (``rlar.policy.condition_mask``). ``logits[:, t]`` predicts ``z_t`` (from the last
condition token on), like :class:`rlar.policy.gpt.GPT`, whose policy interface it implements.
"""

from __future__ import annotations

import math
import os

import torch
import torch.nn.functional as F
from torch import nn

from rlar.policy.caption_embedder import CaptionEmbedder
from rlar.policy.checkpointing import call_block, checkpoints_blocks
from rlar.policy.condition_mask import attention_mask, key_valid
from rlar.policy.conditioning import Condition, class_ids, text_condition
from rlar.policy.exported import run_policy_state
from rlar.policy.gpt import KVCache
from rlar.policy.static_cache import StaticKVCache, attend_at
from rlar.policy.teacher_forcing import TeacherForced
from rlar.tokenizer.zoo_build import read_checkpoint, strict_load

# LlamaGen's GPT_models: name -> (n_layer, n_head, dim). GPT-1B/3B/7B are listed as text-conditional there, but
# the released c2i_3B_384.pt uses GPT-3B.
PRESETS = {
    "GPT-B": (12, 12, 768),
    "GPT-L": (24, 16, 1024),
    "GPT-XL": (36, 20, 1280),
    "GPT-XXL": (48, 24, 1536),
    "GPT-XXXL": (48, 40, 2560),
    "GPT-1B": (22, 32, 2048),
    "GPT-3B": (24, 32, 3200),
    "GPT-7B": (32, 32, 4096),
}


def grid_model_shape(model: str, presets: dict, size: str | None, block_size: int, n_layer: int, n_head: int,
                     dim: int) -> tuple[int, int, int, int]:
    """``(n_layer, n_head, dim, grid)`` of a 2D-RoPE model: those of the preset ``size`` when given, checked for a
    square token grid (``grid`` x ``grid`` = ``block_size``) and a head width that 2D RoPE can split (a multiple
    of 4)."""
    if size is not None:
        if size not in presets:
            raise ValueError(f"policy.size={size!r} is not a {model} preset; choose one of {list(presets)}")
        n_layer, n_head, dim = presets[size]
    grid = math.isqrt(block_size)
    if grid * grid != block_size:
        raise ValueError(f"{model}'s 2D RoPE needs a square grid; block_size={block_size} is not a square")
    if dim % n_head or (dim // n_head) % 4:
        raise ValueError(f"dim={dim} / n_head={n_head} must give a head width divisible by 4 (2D RoPE)")
    return n_layer, n_head, dim, grid


def ffn_hidden_dim(dim: int, multiple_of: int = 256, ffn_dim_multiplier: float | None = None) -> int:
    """SwiGLU width: 2/3 of 4*dim, optionally scaled, rounded up to a multiple of ``multiple_of``."""
    hidden = int(2 * (4 * dim) / 3)
    if ffn_dim_multiplier is not None:
        hidden = int(ffn_dim_multiplier * hidden)
    return math.ceil(hidden / multiple_of) * multiple_of


def rope_2d(grid: int, head_dim: int, base: float = 10000.0, cls_token_num: int = 1) -> torch.Tensor:
    """Rotary table ``[cls_token_num + grid**2, head_dim // 2, 2]`` of (cos, sin) per rotated pair.

    Image token j (raster order) sits at row ``j // grid``, column ``j % grid``: pairs ``0..head_dim//4-1``
    turn by ``row * f_i``, the next ``head_dim // 4`` by ``col * f_i``, with ``f_i = base ** (-4i / head_dim)``.
    The class-token rows are all zeros (not the identity), as in LlamaGen.
    """
    half = head_dim // 2
    freqs = 1.0 / base ** (torch.arange(0, half, 2, dtype=torch.float32) / half)  # [Dh/4]
    angles = torch.arange(grid, dtype=torch.float32)[:, None] * freqs  # [grid, Dh/4]
    grid_angles = torch.cat([angles[:, None].expand(-1, grid, -1), angles[None].expand(grid, -1, -1)], dim=-1)
    table = torch.stack([grid_angles.cos(), grid_angles.sin()], dim=-1).flatten(0, 1)  # [grid**2, Dh/2, 2]
    return torch.cat([torch.zeros(cls_token_num, half, 2), table])


def apply_rope(x: torch.Tensor, rope: torch.Tensor) -> torch.Tensor:
    """Rotate adjacent pairs ``(x[2i], x[2i+1])`` of ``x [N, L, H, Dh]`` by ``rope [L, Dh/2, 2]`` (in fp32)."""
    pairs = x.float().unflatten(-1, (-1, 2))  # [N, L, H, Dh/2, 2]
    cos, sin = rope[None, :, None, :, 0], rope[None, :, None, :, 1]  # [1, L, 1, Dh/2]
    a, b = pairs[..., 0], pairs[..., 1]
    return torch.stack([a * cos - b * sin, b * cos + a * sin], dim=-1).flatten(-2).type_as(x)


class RMSNorm(nn.Module):
    def __init__(self, dim: int, eps: float = 1e-5):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        xf = x.float()
        return (xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + self.eps)).type_as(x) * self.weight


class Attention(nn.Module):
    def __init__(self, dim: int, n_head: int, dropout: float):
        super().__init__()
        self.n_head = n_head
        self.wqkv = nn.Linear(dim, 3 * dim, bias=False)
        self.wo = nn.Linear(dim, dim, bias=False)
        self.resid_dropout = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor, rope: torch.Tensor, cache: KVCache | StaticKVCache | None, layer: int,
                position: torch.Tensor | None = None, mask: torch.Tensor | None = None) -> torch.Tensor:
        """``x [N, L, D]``; with a ``position [1]`` (L = 1), the static-shape step into a ``StaticKVCache``. ``mask
        [N, 1, L, L]``: the attention mask of a whole sequence with padded caption tokens (None: causal); a cache
        holds its own (``key_valid``)."""
        n, length, d = x.shape  # x: [N, L, D]
        q, k, v = self.wqkv(x).view(n, length, 3, self.n_head, d // self.n_head).unbind(2)  # [N, L, H, Dh] each
        q, k, v = apply_rope(q, rope).transpose(1, 2), apply_rope(k, rope).transpose(1, 2), v.transpose(1, 2)
        if position is not None:
            y = attend_at(q, k, v, cache, layer, position)
        elif cache is None:
            if mask is None:
                y = F.scaled_dot_product_attention(q, k, v, is_causal=True)
            else:
                y = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)
        else:
            start, end = cache.length, cache.length + length
            cache.keys[layer][:, :, start:end] = k
            cache.values[layer][:, :, start:end] = v
            k, v = cache.keys[layer][:, :, :end], cache.values[layer][:, :, :end]
            # new position i (absolute start + i) may see every absolute position <= start + i
            if cache.key_valid is not None:  # and no padded caption token but itself
                mask = attention_mask(cache.key_valid[:, :end], start, length)
            else:
                mask = torch.ones(length, end, dtype=torch.bool, device=x.device).tril(diagonal=start)
            y = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)
        return self.resid_dropout(self.wo(y.transpose(1, 2).reshape(n, length, d)))


class FeedForward(nn.Module):
    def __init__(self, dim: int, hidden: int, dropout: float):
        super().__init__()
        self.w1 = nn.Linear(dim, hidden, bias=False)
        self.w3 = nn.Linear(dim, hidden, bias=False)
        self.w2 = nn.Linear(hidden, dim, bias=False)
        self.ffn_dropout = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.ffn_dropout(self.w2(F.silu(self.w1(x)) * self.w3(x)))


class TransformerBlock(nn.Module):
    def __init__(self, dim: int, n_head: int, hidden: int, eps: float, dropout: float):
        super().__init__()
        self.attention = Attention(dim, n_head, dropout)
        self.feed_forward = FeedForward(dim, hidden, dropout)
        self.attention_norm = RMSNorm(dim, eps)
        self.ffn_norm = RMSNorm(dim, eps)

    def forward(self, x: torch.Tensor, rope: torch.Tensor, cache: KVCache | StaticKVCache | None, layer: int,
                position: torch.Tensor | None = None, mask: torch.Tensor | None = None) -> torch.Tensor:
        x = x + self.attention(self.attention_norm(x), rope, cache, layer, position, mask)
        return x + self.feed_forward(self.ffn_norm(x))


class LabelEmbedder(nn.Module):
    """``embedding_table``: one row per class plus the null class (row ``num_classes``)."""

    def __init__(self, num_classes: int, dim: int):
        super().__init__()
        self.embedding_table = nn.Embedding(num_classes + 1, dim)


class LlamaGen(TeacherForced):
    """LlamaGen over ``vocab_size`` codes, ``block_size`` (a square grid) image tokens per sample: c2i, or t2i with
    ``caption_dim`` (the text encoder's width; 2048 for FLAN-T5-XL) and ``cls_token_num`` caption tokens.

    ``size``: a preset of :data:`PRESETS` (e.g. ``"GPT-B"``), which sets ``n_layer``, ``n_head`` and ``dim``.
    ``dropout``: LlamaGen's token, residual and FFN dropout (keep 0 for RL: log-probs must be deterministic).
    Label dropout for guidance is the pretraining loop's job, not the module's.
    """

    def __init__(self, vocab_size: int, block_size: int, num_classes: int = 0, size: str | None = None,
                 n_layer: int = 2, n_head: int = 4, dim: int = 96, multiple_of: int = 256,
                 ffn_dim_multiplier: float | None = None, rope_base: float = 10000.0, norm_eps: float = 1e-5,
                 cls_token_num: int = 1, dropout: float = 0.0, grad_checkpointing: bool = False,
                 caption_dim: int | None = None):
        super().__init__()
        self.grad_checkpointing = grad_checkpointing  # checkpoint each block in the training pass
        n_layer, n_head, dim, grid = grid_model_shape("LlamaGen", PRESETS, size, block_size, n_layer, n_head, dim)
        if caption_dim is None and cls_token_num != 1:
            raise ValueError(f"cls_token_num={cls_token_num}: the c2i model reads exactly one class token")
        self.vocab_size, self.block_size, self.num_classes = vocab_size, block_size, num_classes
        self.null_class = num_classes  # the extra row of the class table
        self.caption_dim = caption_dim
        self.cond_len = cls_token_num  # condition positions before the image tokens
        self.sequence_len = cls_token_num + block_size - 1  # what the KV cache holds
        self.n_layer, self.n_head, self.n_embd = n_layer, n_head, dim
        if caption_dim is None:
            self.cls_embedding = LabelEmbedder(num_classes, dim)
        else:
            self.cls_embedding = CaptionEmbedder(caption_dim, dim, cls_token_num)
        self.tok_embeddings = nn.Embedding(vocab_size, dim)
        self.tok_dropout = nn.Dropout(dropout)
        hidden = ffn_hidden_dim(dim, multiple_of, ffn_dim_multiplier)
        self.layers = nn.ModuleList(TransformerBlock(dim, n_head, hidden, norm_eps, dropout) for _ in range(n_layer))
        self.norm = RMSNorm(dim, norm_eps)
        self.output = nn.Linear(dim, vocab_size, bias=False)
        # derived from the config, so not saved (released checkpoints do not hold it)
        self.register_buffer("freqs_cis", rope_2d(grid, dim // n_head, rope_base, cls_token_num), persistent=False)
        for module in self.modules():  # LlamaGen's init: N(0, 0.02) weights, a zero output layer
            if isinstance(module, (nn.Linear, nn.Embedding)):
                nn.init.normal_(module.weight, std=0.02)
        nn.init.zeros_(self.output.weight)

    def class_ids(self, labels: Condition | torch.Tensor | None, batch: int, device) -> torch.Tensor:
        """Labels ``[N]``; ``None`` or negative entries mean the null (unconditional) class."""
        return class_ids(labels, batch, self.null_class, device)

    def _start(self, condition, tokens: torch.Tensor, cache: KVCache | StaticKVCache | None = None):
        """A sequence read from its start: the condition tokens, then ``tokens [N, k]``. Returns the embeddings
        ``[N, cond_len + k, D]`` and the attention mask of a padded caption (None: causal; with a ``cache``, its
        ``key_valid`` is set instead)."""
        n = tokens.shape[0]
        x = self.tok_embeddings(tokens)  # [N, k, D]
        if self.caption_dim is None:
            table = self.cls_embedding.embedding_table
            x = torch.cat([table(self.class_ids(condition, n, tokens.device))[:, None], x], dim=1)
            return self.tok_dropout(x), None
        text = text_condition(condition, n, "this LlamaGen (t2i)")
        x = self.tok_dropout(torch.cat([self.cls_embedding(text), x], dim=1))
        if cache is not None:
            cache.key_valid = key_valid(text.mask, self.sequence_len)
            return x, None
        return x, attention_mask(key_valid(text.mask, x.shape[1]), 0, x.shape[1])

    def _trunk(self, x: torch.Tensor, start: int, cache: KVCache | None = None,
               mask: torch.Tensor | None = None) -> torch.Tensor:
        rope = self.freqs_cis[start : start + x.shape[1]]  # [L, Dh/2, 2]
        checkpointed = checkpoints_blocks(self)
        for i, layer in enumerate(self.layers):
            x = call_block(layer, x, rope, cache, i, None, mask, checkpointed=checkpointed)
        if cache is not None:
            cache.length += x.shape[1]
        return self.norm(x)

    def head(self, h: torch.Tensor) -> torch.Tensor:
        """Final hidden states ``[..., D]`` -> logits ``[..., V]``."""
        return self.output(h)

    def hidden_states(self, tokens: torch.Tensor, condition: Condition | torch.Tensor | None = None) -> torch.Tensor:
        """Teacher forcing: tokens ``[N, T]`` -> final hidden states ``[N, T, D]``; position t predicts token t."""
        if tokens.shape[1] > self.block_size:
            raise ValueError(f"sequence of {tokens.shape[1]} tokens exceeds block_size={self.block_size}")
        x, mask = self._start(condition, tokens[:, :-1])
        return self._trunk(x, 0, mask=mask)[:, self.cond_len - 1 :]

    # -- incremental decoding: the interface the shared sampler uses ---------------------------------
    def new_cache(self, batch: int, device, dtype=None) -> KVCache:
        dtype = dtype or self.tok_embeddings.weight.dtype
        return KVCache(self.n_layer, batch, self.n_head, self.sequence_len, self.n_embd // self.n_head, device, dtype)

    def prefill(self, condition: Condition | torch.Tensor | None, prefix: torch.Tensor, cache: KVCache
                ) -> torch.Tensor:
        """Read the condition and a prefix ``[N, k]`` (k >= 0); return logits ``[N, V]`` for token k."""
        x, _ = self._start(condition, prefix, cache)
        return self.head(self._trunk(x, 0, cache)[:, -1])

    def step(self, token: torch.Tensor, cache: KVCache) -> torch.Tensor:
        """Append one token ``[N]``; return logits ``[N, V]`` for the next position."""
        h = self._trunk(self.tok_dropout(self.tok_embeddings(token[:, None])), cache.length, cache)
        return self.head(h[:, -1])

    def static_step(self, token: torch.Tensor, cache: StaticKVCache) -> torch.Tensor:
        """``step`` at fixed shapes (one graph for every position): append ``token [N]`` at ``cache.position``;
        return logits ``[N, V]`` for the next position. Leaves ``cache.position`` and ``cache.length`` as they are."""
        x = self.tok_dropout(self.tok_embeddings(token[:, None]))  # [N, 1, D]
        rope = self.freqs_cis[cache.position]  # [1, Dh/2, 2]
        for i, layer in enumerate(self.layers):
            x = layer(x, rope, cache, i, cache.position)
        return self.head(self.norm(x)[:, -1])


def checkpoint_weights(checkpoint: dict) -> dict:
    """The state dict inside a LlamaGen checkpoint: under "model" (DDP), "module" (DeepSpeed), "state_dict",
    or the bare dict (FSDP's consolidated.pth)."""
    for key in ("model", "module", "state_dict"):
        if isinstance(checkpoint.get(key), dict):
            return checkpoint[key]
    return checkpoint


LLAMAGEN_HINT = ("check policy.size, vocab_size, num_classes, block_size; a t2i checkpoint (cls_embedding.cap_proj.*) "
                 "needs a text_encoder whose width and max_length are its caption_dim and cls_token_num, a c2i one "
                 "(cls_embedding.embedding_table) none")


def load_llamagen_state(model: LlamaGen, path_or_state: str | os.PathLike | dict) -> LlamaGen:
    """Load a released checkpoint (a path, read with ``read_checkpoint``: train_c2i.py also saves its argparse args,
    or a loaded dict) strictly (``strict_load``: its error lists the missing, unexpected and misshapen keys). A stray
    ``freqs_cis`` (derived, recomputed here) is ignored."""
    checkpoint = path_or_state if isinstance(path_or_state, dict) else read_checkpoint(path_or_state,
                                                                                        "policy.checkpoint")
    state = {k: v for k, v in checkpoint_weights(run_policy_state(checkpoint)).items() if k != "freqs_cis"}
    return strict_load(model, state, "policy.checkpoint", LLAMAGEN_HINT)
