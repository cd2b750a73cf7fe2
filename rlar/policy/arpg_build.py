"""The ARPG "before RL" policy: a released checkpoint, or a tiny one pretrained on the tokenized train split with
random-order teacher forcing (a fresh permutation per sample and step), cached like the GPT prior."""

from __future__ import annotations

from dataclasses import asdict

from rlar.config.schemas import from_options
from rlar.data.batches import ImageData
from rlar.policy.arpg import ARPG, load_arpg_state
from rlar.policy.prior import cached_prior, check_vocabulary
from rlar.policy.schemas import ARPGSchema
from rlar.tokenizer.frozen import FrozenTokenizer


def build_arpg_prior(tokenizer: FrozenTokenizer, data: ImageData, **options) -> ARPG:
    """An ARPG policy loaded strictly from ``checkpoint``, or from the cached prior (pretrained on a miss).
    ``options``: the fields of :class:`ARPGSchema`; ``decoding`` is the parallel sampler's settings for evaluation
    (the config passes the rollout's)."""
    spec = from_options(ARPGSchema, options)
    block_size = spec.block_size or tokenizer.num_tokens
    check_vocabulary(spec.vocab_size, block_size, tokenizer)
    arch = {"vocab_size": spec.vocab_size, "block_size": block_size, "num_classes": data.num_classes,
            "size": spec.size, "n_layer": spec.n_layer, "n_head": spec.n_head, "dim": spec.dim,
            "multiple_of": spec.multiple_of, "ffn_dim_multiplier": spec.ffn_dim_multiplier,
            "rope_base": spec.rope_base, "norm_eps": spec.norm_eps, "dropout": spec.dropout}
    policy = ARPG(**arch, decoding=asdict(spec.decoding))
    if spec.checkpoint:
        return load_arpg_state(policy, spec.checkpoint)
    resolved = {"n_layer": policy.n_layer, "n_head": policy.n_head, "dim": policy.n_embd}  # after the preset
    return cached_prior(policy, "arpg_prior", {**arch, **resolved}, tokenizer, data, asdict(spec.pretrain),
                        spec.cache_dir)
