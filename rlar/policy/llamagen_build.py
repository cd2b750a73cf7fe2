"""The LlamaGen "before RL" policy: a released checkpoint, or a small one pretrained on the tokenized train split."""

from __future__ import annotations

from dataclasses import asdict

from rlar.config.schemas import from_options
from rlar.data.batches import ImageData
from rlar.policy.exported import folder_or_file
from rlar.policy.llamagen import LlamaGen, load_llamagen_state
from rlar.policy.prior import cached_prior, check_vocabulary
from rlar.policy.schemas import LlamaGenSchema, RoPETransformerSchema
from rlar.tokenizer.frozen import FrozenTokenizer


def rope_transformer_arch(spec: RoPETransformerSchema, tokenizer: FrozenTokenizer, data: ImageData) -> dict:
    """The constructor arguments LlamaGen and ARPG share, from their schema (``block_size`` null: the tokenizer's
    grid), after checking the vocabulary against the tokenizer."""
    block_size = spec.block_size or tokenizer.num_tokens
    check_vocabulary(spec.vocab_size, block_size, tokenizer)
    return {"vocab_size": spec.vocab_size, "block_size": block_size, "num_classes": data.num_classes,
            "size": spec.size, "n_layer": spec.n_layer, "n_head": spec.n_head, "dim": spec.dim,
            "multiple_of": spec.multiple_of, "ffn_dim_multiplier": spec.ffn_dim_multiplier,
            "rope_base": spec.rope_base, "norm_eps": spec.norm_eps, "dropout": spec.dropout}


def cached_rope_prior(policy, name: str, arch: dict, spec: RoPETransformerSchema, tokenizer: FrozenTokenizer,
                      data: ImageData):
    """``policy`` with the weights of the cached prior ``name`` (pretrained on a miss), keyed by its architecture
    after the size preset."""
    resolved = {"n_layer": policy.n_layer, "n_head": policy.n_head, "dim": policy.n_embd}
    return cached_prior(policy, name, {**arch, **resolved}, tokenizer, data, asdict(spec.pretrain), spec.cache_dir)


def build_llamagen_prior(tokenizer: FrozenTokenizer, data: ImageData, **options) -> LlamaGen:
    """A LlamaGen policy loaded strictly from ``checkpoint``, or from the cached prior (pretrained on a miss).
    ``options``: the fields of :class:`LlamaGenSchema`."""
    spec = from_options(LlamaGenSchema, options)
    arch = {**rope_transformer_arch(spec, tokenizer, data), "cls_token_num": spec.cls_token_num}
    policy = LlamaGen(**arch, grad_checkpointing=spec.grad_checkpointing)
    if spec.checkpoint:
        return load_llamagen_state(policy, folder_or_file(spec.checkpoint, policy))
    return cached_rope_prior(policy, "llamagen_prior", arch, spec, tokenizer, data)
