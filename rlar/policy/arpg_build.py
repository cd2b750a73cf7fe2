"""The ARPG "before RL" policy: a released checkpoint, or a tiny one pretrained on the tokenized train split with
random-order teacher forcing (a fresh permutation per sample and step), cached like the GPT prior."""

from __future__ import annotations

from rlar.data.batches import ImageData
from rlar.policy.arpg import ARPG, load_arpg_state
from rlar.policy.prior import cached_prior, check_vocabulary, pretrain_settings
from rlar.tokenizer.build import plain
from rlar.tokenizer.frozen import FrozenTokenizer


def build_arpg_prior(tokenizer: FrozenTokenizer, data: ImageData, vocab_size: int, block_size: int | None = None,
                     size: str | None = None, n_layer: int = 4, n_head: int = 4, dim: int = 96,
                     multiple_of: int = 256, ffn_dim_multiplier: float | None = None, rope_base: float = 10000.0,
                     norm_eps: float = 1e-5, dropout: float = 0.0, decoding: dict | None = None,
                     checkpoint: str | None = None, pretrain: dict | None = None,
                     cache_dir: str | None = None) -> ARPG:
    """An ARPG policy loaded strictly from ``checkpoint``, or from the cached prior (pretrained on a miss).
    ``decoding``: the parallel sampler's settings for evaluation (the config passes the rollout's)."""
    block_size = block_size or tokenizer.num_tokens
    check_vocabulary(vocab_size, block_size, tokenizer)
    arch = {"vocab_size": vocab_size, "block_size": block_size, "num_classes": data.num_classes, "size": size,
            "n_layer": n_layer, "n_head": n_head, "dim": dim, "multiple_of": multiple_of,
            "ffn_dim_multiplier": ffn_dim_multiplier, "rope_base": rope_base, "norm_eps": norm_eps,
            "dropout": dropout}
    policy = ARPG(**arch, decoding=plain(decoding))
    if checkpoint:
        return load_arpg_state(policy, checkpoint)
    resolved = {"n_layer": policy.n_layer, "n_head": policy.n_head, "dim": policy.n_embd}  # after the preset
    return cached_prior(policy, "arpg_prior", {**arch, **resolved}, tokenizer, data, pretrain_settings(pretrain),
                        cache_dir)
