"""The LlamaGen "before RL" policy: a released checkpoint, or a small one pretrained on the tokenized train split."""

from __future__ import annotations

from rlar.data.batches import ImageData
from rlar.policy.llamagen import LlamaGen, load_llamagen_state
from rlar.policy.prior import cached_prior, check_vocabulary, pretrain_settings
from rlar.tokenizer.frozen import FrozenTokenizer


def build_llamagen_prior(tokenizer: FrozenTokenizer, data: ImageData, vocab_size: int, block_size: int | None = None,
                         size: str | None = None, n_layer: int = 2, n_head: int = 4, dim: int = 96,
                         multiple_of: int = 256, ffn_dim_multiplier: float | None = None, rope_base: float = 10000.0,
                         norm_eps: float = 1e-5, cls_token_num: int = 1, dropout: float = 0.0,
                         checkpoint: str | None = None, pretrain: dict | None = None,
                         cache_dir: str | None = None) -> LlamaGen:
    """A LlamaGen policy loaded strictly from ``checkpoint``, or from the cached prior (pretrained on a miss)."""
    block_size = block_size or tokenizer.num_tokens
    check_vocabulary(vocab_size, block_size, tokenizer)
    arch = {"vocab_size": vocab_size, "block_size": block_size, "num_classes": data.num_classes, "size": size,
            "n_layer": n_layer, "n_head": n_head, "dim": dim, "multiple_of": multiple_of,
            "ffn_dim_multiplier": ffn_dim_multiplier, "rope_base": rope_base, "norm_eps": norm_eps,
            "cls_token_num": cls_token_num, "dropout": dropout}
    policy = LlamaGen(**arch)
    if checkpoint:
        return load_llamagen_state(policy, checkpoint)
    resolved = {"n_layer": policy.n_layer, "n_head": policy.n_head, "dim": policy.n_embd}  # after the preset
    return cached_prior(policy, "llamagen_prior", {**arch, **resolved}, tokenizer, data, pretrain_settings(pretrain),
                        cache_dir)
