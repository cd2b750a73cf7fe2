"""ARPG (autoregressive image generation with randomized parallel decoding), class-conditional, with the
state-dict layout of its released checkpoints.

A two-pass decoder. Pass 1 (``layers.self_dec``): Llama-style blocks (RMSNorm, self-attention with 2D RoPE,
SwiGLU) over the known content, i.e. the class slot and the tokens decoded so far, each rotated by its own grid
position. One shared ``layers.norm`` + ``layers.to_k`` / ``layers.to_v`` turns their output into one set of keys
(rotated by the content positions) and values for every Pass-2 block. Pass 2 (``layers.cross_dec``):
cross-attention-only blocks whose queries all start as the same [MASK] embedding; the position a query predicts
enters only as the 2D RoPE of that target position, applied to the query in every block. Queries never attend
to each other. A final ``norm`` and a bias-free ``head`` give the logits.

One embedding table ``embeddings``: codes ``0..V-1``, the mask ``V``, class ``c`` at ``V + 1 + c``, the null
class (guidance) at ``V + 1 + C``, and one unused row ``V + 2 + C``. The RoPE table has the class slot at row 0
(all zeros, so the class token's query and key vanish, as in LlamaGen) and raster position ``p`` at row ``1 + p``.

Attention pattern, for a decoding order and a grouping of it into steps (``two_pass_masks``): the class slot is
group 0 and a token decoded at step ``s`` is in group ``s + 1``. Pass 1 reads the class slot and the tokens of
every step but the last; an input sees the inputs of its own and earlier groups. The query of a token of step
``s`` sees the keys of groups ``<= s``: the class slot and the tokens of earlier steps. With one token per step
these are the fully causal masks of training; with the sampler's steps they are exactly what its KV-cached
passes see (a step's tokens are fed to Pass 1 together, unmasked, at the next step). Unlike the reference, the
teacher-forced masks do not depend on train/eval mode, so ``forward`` never lets a target see itself.
"""

from __future__ import annotations

import os

import torch
import torch.nn.functional as F
from torch import nn

from rlar.policy.checkpointing import call_block, checkpoints_blocks
from rlar.policy.conditioning import class_ids
from rlar.policy.exported import run_policy_state
from rlar.policy.gpt import KVCache
from rlar.policy.llamagen import FeedForward, RMSNorm, checkpoint_weights, ffn_hidden_dim, grid_model_shape, rope_2d
from rlar.rollout.parallel_decoding import ParallelSample, sample_parallel
from rlar.tokenizer.zoo_build import read_checkpoint, strict_load

# ARPG_L / ARPG_XL / ARPG_XXL: (n_layer of both passes together, n_head, dim); head width 64
ARPG_PRESETS = {"L": (24, 16, 1024), "XL": (36, 20, 1280), "XXL": (48, 24, 1536)}


def rotate(x: torch.Tensor, rope: torch.Tensor) -> torch.Tensor:
    """Rotate adjacent pairs of ``x [N, L, H, Dh]`` by per-row RoPE ``rope [N, L, Dh/2, 2]`` (cos, sin), in fp32."""
    pairs = x.float().unflatten(-1, (-1, 2))  # [N, L, H, Dh/2, 2]
    cos, sin = rope[:, :, None, :, 0], rope[:, :, None, :, 1]  # [N, L, 1, Dh/2]
    a, b = pairs[..., 0], pairs[..., 1]
    return torch.stack([a * cos - b * sin, b * cos + a * sin], dim=-1).flatten(-2).type_as(x)


def two_pass_masks(step_sizes, device=None) -> tuple[torch.Tensor, torch.Tensor]:
    """Attention masks (True = attend) for tokens decoded in steps of ``step_sizes`` (``[S]``, summing to T).

    Returns ``(self_mask [L, L], cross_mask [T, L])`` over the Pass-1 inputs ``[class, tokens of steps 0..S-2]``
    (``L = 1 + T - step_sizes[-1]``, decode order) and the T queries (decode order): see the module docstring.
    """
    sizes = torch.as_tensor(step_sizes, dtype=torch.long, device=device)
    step_of = torch.arange(len(sizes), device=device).repeat_interleave(sizes)  # [T] step of each decoded token
    fed = len(step_of) - int(sizes[-1])
    group = torch.cat([torch.zeros(1, dtype=torch.long, device=device), step_of[:fed] + 1])  # [L]
    return group[None, :] <= group[:, None], group[None, :] <= step_of[:, None]


def _cached(cache: KVCache, slot: int, k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Write ``k, v [N, H, L, Dh]`` at ``cache.length`` of ``slot``; return every key and value so far."""
    start, end = cache.length, cache.length + k.shape[2]
    cache.keys[slot][:, :, start:end] = k
    cache.values[slot][:, :, start:end] = v
    return cache.keys[slot][:, :, :end], cache.values[slot][:, :, :end]


def _attend(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: torch.Tensor | None, cache: KVCache | None,
            slot: int) -> torch.Tensor:
    """Attention of ``q [N, Lq, H, Dh]`` over ``k, v [N, Lk, H, Dh]`` (appended to ``cache`` slot ``slot`` first,
    when given: then every cached key is seen); returns ``[N, Lq, H * Dh]``."""
    q, k, v = q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2)  # [N, H, L, Dh]
    if cache is not None:
        k, v = _cached(cache, slot, k, v)
    y = F.scaled_dot_product_attention(q, k.type_as(q), v.type_as(q), attn_mask=mask)
    return y.transpose(1, 2).flatten(2)


class SelfAttention(nn.Module):
    def __init__(self, dim: int, n_head: int, dropout: float):
        super().__init__()
        self.n_head = n_head
        self.to_q = nn.Linear(dim, dim, bias=False)
        self.to_k = nn.Linear(dim, dim, bias=False)
        self.to_v = nn.Linear(dim, dim, bias=False)
        self.proj = nn.Linear(dim, dim, bias=False)
        self.proj_drop = nn.Dropout(dropout)

    def forward(self, x, rope, mask, cache, slot):  # x [N, L, D], rope [N, L, Dh/2, 2]
        q, k, v = (f(x).unflatten(-1, (self.n_head, -1)) for f in (self.to_q, self.to_k, self.to_v))
        y = _attend(rotate(q, rope), rotate(k, rope), v, mask, cache, slot)
        return self.proj_drop(self.proj(y))


class CrossAttention(nn.Module):
    """Queries only: the keys and values are the shared ones made from Pass 1."""

    def __init__(self, dim: int, n_head: int, dropout: float):
        super().__init__()
        self.n_head = n_head
        self.to_q = nn.Linear(dim, dim, bias=False)
        self.proj = nn.Linear(dim, dim, bias=False)
        self.proj_drop = nn.Dropout(dropout)

    def forward(self, x, k, v, rope, mask):  # x [N, Lq, D], k/v [N, H, Lk, Dh], rope [N, Lq, Dh/2, 2]
        q = rotate(self.to_q(x).unflatten(-1, (self.n_head, -1)), rope).transpose(1, 2)  # [N, H, Lq, Dh]
        y = F.scaled_dot_product_attention(q, k.type_as(q), v.type_as(q), attn_mask=mask)
        return self.proj_drop(self.proj(y.transpose(1, 2).flatten(2)))


class Block(nn.Module):
    """Pre-norm residual block around ``attn`` (a :class:`SelfAttention` or a :class:`CrossAttention`) and a
    SwiGLU feed-forward; ``forward(x, *attn_args)`` passes the attention its own arguments after the normed ``x``."""

    def __init__(self, attn: nn.Module, dim: int, hidden: int, eps: float, dropout: float):
        super().__init__()
        self.attn = attn
        self.ffn = FeedForward(dim, hidden, dropout)
        self.attn_norm = RMSNorm(dim, eps)
        self.ffn_norm = RMSNorm(dim, eps)

    def forward(self, x, *attn_args):
        x = x + self.attn(self.attn_norm(x), *attn_args)
        return x + self.ffn(self.ffn_norm(x))


class TwoPassDecoder(nn.Module):
    """``self_dec`` blocks, the shared ``norm`` / ``to_k`` / ``to_v``, then ``cross_dec`` blocks."""

    def __init__(self, n_pass: int, dim: int, n_head: int, hidden: int, eps: float, dropout: float,
                 grad_checkpointing: bool = False):
        super().__init__()
        self.n_head = n_head
        self.grad_checkpointing = grad_checkpointing  # checkpoint each block in the training pass
        self.self_dec = nn.ModuleList(Block(SelfAttention(dim, n_head, dropout), dim, hidden, eps, dropout)
                                      for _ in range(n_pass))
        self.cross_dec = nn.ModuleList(Block(CrossAttention(dim, n_head, dropout), dim, hidden, eps, dropout)
                                       for _ in range(n_pass))
        self.norm = RMSNorm(dim, eps)
        self.to_k = nn.Linear(dim, dim, bias=False)
        self.to_v = nn.Linear(dim, dim, bias=False)

    def forward(self, x, queries, rope, query_rope, self_mask=None, cross_mask=None, cache: KVCache | None = None):
        """Content ``x [N, L, D]`` at ``rope [N, L, Dh/2, 2]``; ``queries [N, Lq, D]`` at ``query_rope``. With a
        ``cache``, ``x`` is appended to it (slots: one per Pass-1 block, then the shared keys) and no mask is used.
        Returns the queries' outputs ``[N, Lq, D]``."""
        checkpointed = checkpoints_blocks(self)
        for i, block in enumerate(self.self_dec):
            x = call_block(block, x, rope, self_mask, cache, i, checkpointed=checkpointed)
        x = self.norm(x)
        k = rotate(self.to_k(x).unflatten(-1, (self.n_head, -1)), rope).transpose(1, 2)  # [N, H, L, Dh]
        v = self.to_v(x).unflatten(-1, (self.n_head, -1)).transpose(1, 2)
        if cache is not None:
            k, v = _cached(cache, len(self.self_dec), k, v)
            cache.length += x.shape[1]
        for block in self.cross_dec:
            queries = call_block(block, queries, k, v, query_rope, cross_mask, checkpointed=checkpointed)
        return queries


class ARPG(nn.Module):
    """ARPG over ``vocab_size`` codes, ``block_size`` (a square grid) image tokens per sample.

    ``size``: a preset of :data:`ARPG_PRESETS` (``"L"``, ``"XL"``, ``"XXL"``), which sets ``n_layer`` (both passes
    together, half each), ``n_head`` and ``dim``. ``dropout``: token, residual and FFN dropout (keep 0 for RL).
    ``decoding``: the parallel sampler's settings for free-running evaluation (``num_iter``, ``schedule``,
    ``cfg_schedule``; :meth:`decode`). ``grad_checkpointing``: recompute each block's activations in the training
    pass's backward (``rlar.policy.checkpointing``).
    """

    decodes_in_parallel = True  # free-running samples come from decode(), not the raster sampler

    def __init__(self, vocab_size: int, block_size: int, num_classes: int = 0, size: str | None = None,
                 n_layer: int = 4, n_head: int = 4, dim: int = 96, multiple_of: int = 256,
                 ffn_dim_multiplier: float | None = None, rope_base: float = 10000.0, norm_eps: float = 1e-5,
                 dropout: float = 0.0, decoding: dict | None = None, grad_checkpointing: bool = False):
        super().__init__()
        n_layer, n_head, dim, grid = grid_model_shape("ARPG", ARPG_PRESETS, size, block_size, n_layer, n_head, dim)
        if n_layer < 2 or n_layer % 2:
            raise ValueError(f"n_layer={n_layer} counts both passes (half self-, half cross-decoder): use an even "
                             "number >= 2")
        self.vocab_size, self.block_size, self.num_classes = vocab_size, block_size, num_classes
        self.null_class = num_classes  # class_ids() maps it to the token id V + 1 + C
        self.mask_id = vocab_size
        self.n_layer, self.n_head, self.n_embd = n_layer, n_head, dim
        self.decoding = dict(decoding or {})
        self.embeddings = nn.Embedding(vocab_size + num_classes + 3, dim)
        self.embed_drop = nn.Dropout(dropout)
        hidden = ffn_hidden_dim(dim, multiple_of, ffn_dim_multiplier)
        self.layers = TwoPassDecoder(n_layer // 2, dim, n_head, hidden, norm_eps, dropout, grad_checkpointing)
        self.norm = RMSNorm(dim, norm_eps)
        self.head = nn.Linear(dim, vocab_size, bias=False)
        # derived from the config, so not saved (released checkpoints do not hold it)
        self.register_buffer("freqs_cis", rope_2d(grid, dim // n_head, rope_base, 1), persistent=False)
        for module in self.modules():  # the reference's init: N(0, 0.02) weights, a zero head
            if isinstance(module, (nn.Linear, nn.Embedding)):
                nn.init.normal_(module.weight, std=0.02)
        nn.init.zeros_(self.head.weight)

    def class_ids(self, labels: torch.Tensor | None, batch: int, device) -> torch.Tensor:
        """Embedding ids ``[N]`` of the class slot: ``V + 1 + c``; ``None`` / negative labels: the null class."""
        return self.vocab_size + 1 + class_ids(labels, batch, self.null_class, device)

    def _run(self, ids, rows, query_rows, self_mask=None, cross_mask=None, cache=None) -> torch.Tensor:
        """Embedding ids ``[N, L]`` at RoPE rows ``rows [N, L]``, queries at rows ``query_rows [N, Lq]`` ->
        final hidden states of the queries ``[N, Lq, D]``."""
        x = self.embed_drop(self.embeddings(ids))
        queries = self.embeddings.weight[self.mask_id].expand(*query_rows.shape, -1)
        out = self.layers(x, queries, self.freqs_cis[rows], self.freqs_cis[query_rows], self_mask, cross_mask, cache)
        return self.norm(out)

    def forward(self, tokens: torch.Tensor, labels: torch.Tensor | None = None, hidden: bool = False,
                orders: torch.Tensor | None = None, step_sizes: torch.Tensor | None = None):
        """Teacher forcing of ``tokens [N, T]`` (raster) -> logits ``[N, T, V]`` (raster): ``logits[:, p]`` predicts
        ``tokens[:, p]`` from the class and the tokens decoded before it.

        ``orders [N, T]``: the decoding order of each row (``orders[:, j]`` is the j-th position decoded); None =
        a fresh random permutation per row (global RNG), as in training. ``step_sizes [S]``: tokens per step,
        summing to T; None = one per step, the fully causal masks of training (pretraining path); given = the
        sampler's step-grouped attention, which reproduces its log-probs (RL path). With ``hidden=True``:
        ``(logits, final hidden states [N, T, D])`` (raster). Training passes go through here (DDP, FSDP).
        """
        n, t = tokens.shape
        if t != self.block_size:
            raise ValueError(f"ARPG reads whole images: got {t} tokens, block_size={self.block_size}")
        if orders is None:
            orders = torch.rand(n, t, device=tokens.device).argsort(dim=1)
        sizes = torch.ones(t, dtype=torch.long) if step_sizes is None else step_sizes
        self_mask, cross_mask = two_pass_masks(sizes, tokens.device)
        fed = self_mask.shape[0] - 1  # tokens read by Pass 1 (all but the last step's)
        ids = torch.cat([self.class_ids(labels, n, tokens.device)[:, None], tokens.gather(1, orders[:, :fed])], 1)
        rows = torch.cat([torch.zeros_like(orders[:, :1]), 1 + orders[:, :fed]], 1)  # [N, 1 + fed]
        states = self._run(ids, rows, 1 + orders, self_mask, cross_mask)  # [N, T, D], decode order
        states = states.gather(1, orders.argsort(dim=1)[..., None].expand_as(states))  # raster
        logits = self.head(states)
        return (logits, states) if hidden else logits

    def query(self, ids: torch.Tensor, rows: torch.Tensor, query_rows: torch.Tensor, self_mask: torch.Tensor,
              cross_mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Content ids ``[N, L]`` at RoPE rows ``rows [N, L]`` read by queries at ``query_rows [N, Lq]`` under
        ``self_mask`` ``[L, L]`` or per row ``[N, 1, L, L]`` and ``cross_mask`` ``[Lq, L]`` / ``[N, 1, Lq, L]``
        (True = attend): ``(logits [N, Lq, V], final hidden states [N, Lq, D])``. No cache: a decoding state
        read from scratch (``rlar.schedule``)."""
        states = self._run(ids, rows, query_rows, self_mask, cross_mask)
        return self.head(states), states

    # -- incremental parallel decoding: the interface of rlar.rollout.parallel_decoding ----------------------
    def new_cache(self, batch: int, device, dtype=None) -> KVCache:
        """Keys/values of each Pass-1 block and the shared Pass-2 keys/values, for the class slot + T tokens."""
        dtype = dtype or self.embeddings.weight.dtype
        return KVCache(self.n_layer // 2 + 1, batch, self.n_head, self.block_size + 1, self.n_embd // self.n_head,
                       device, dtype)

    def decode_step(self, ids: torch.Tensor, rows: torch.Tensor, query_rows: torch.Tensor, cache: KVCache
                    ) -> torch.Tensor:
        """One parallel step: feed embedding ids ``[N, L]`` (the class slot, or the last step's codes) at RoPE rows
        ``rows [N, L]`` to Pass 1, appending to ``cache`` (no mask: they see the cache and each other); the
        queries at rows ``query_rows [N, n]`` attend to the whole cache. Returns logits ``[N, n, V]``."""
        return self.head(self._run(ids, rows, query_rows, cache=cache))

    def decode(self, labels: torch.Tensor | None, num_samples: int, **sampling) -> ParallelSample:
        """``num_samples`` free-running images for ``labels [N]`` under the fixed schedule ``decoding`` and
        ``sampling`` (temperature, top_k, top_p, cfg_scale, generator: ``rlar.rollout.parallel_decoding``)."""
        return sample_parallel(self, labels, num_samples, **self.decoding, **sampling)


def load_arpg_state(model: ARPG, path_or_state: str | os.PathLike | dict) -> ARPG:
    """Load a released checkpoint strictly (``state_dict``, ``model`` or ``module`` entry, an rlar RL checkpoint's
    ``policy``, or a bare state dict), read with ``torch.load(weights_only=True)``; the error lists every missing,
    unexpected and misshapen key. A stray ``freqs_cis`` (derived, recomputed here) is ignored."""
    checkpoint = path_or_state if isinstance(path_or_state, dict) else read_checkpoint(path_or_state,
                                                                                        "policy.checkpoint")
    state = {k: v for k, v in checkpoint_weights(run_policy_state(checkpoint)).items() if k != "freqs_cis"}
    return strict_load(model, state, "policy.checkpoint", ARPG_HINT)


ARPG_HINT = ("check policy.size (L: arpg_300m.pt, XL: arpg_700m.pt, XXL: arpg_1b.pt), vocab_size (the tokenizer's "
             "codebook), block_size and num_classes (data.num_classes: 1000 for the ImageNet models)")
