"""The LlamaGen "before RL" policy: a released checkpoint, or a small one pretrained on the tokenized train split."""

from __future__ import annotations

from dataclasses import asdict

from rlar.config.schemas import from_options
from rlar.data.batches import ImageData
from rlar.policy.llamagen import LlamaGen, load_llamagen_state
from rlar.policy.prior import cached_prior, check_vocabulary
from rlar.policy.schemas import LlamaGenSchema
from rlar.tokenizer.frozen import FrozenTokenizer


def build_llamagen_prior(tokenizer: FrozenTokenizer, data: ImageData, **options) -> LlamaGen:
    """A LlamaGen policy loaded strictly from ``checkpoint``, or from the cached prior (pretrained on a miss).
    ``options``: the fields of :class:`LlamaGenSchema`."""
    spec = from_options(LlamaGenSchema, options)
    block_size = spec.block_size or tokenizer.num_tokens
    check_vocabulary(spec.vocab_size, block_size, tokenizer)
    arch = {"vocab_size": spec.vocab_size, "block_size": block_size, "num_classes": data.num_classes,
            "size": spec.size, "n_layer": spec.n_layer, "n_head": spec.n_head, "dim": spec.dim,
            "multiple_of": spec.multiple_of, "ffn_dim_multiplier": spec.ffn_dim_multiplier,
            "rope_base": spec.rope_base, "norm_eps": spec.norm_eps, "cls_token_num": spec.cls_token_num,
            "dropout": spec.dropout}
    policy = LlamaGen(**arch)
    if spec.checkpoint:
        return load_llamagen_state(policy, spec.checkpoint)
    resolved = {"n_layer": policy.n_layer, "n_head": policy.n_head, "dim": policy.n_embd}  # after the preset
    return cached_prior(policy, "llamagen_prior", {**arch, **resolved}, tokenizer, data, asdict(spec.pretrain),
                        spec.cache_dir)
