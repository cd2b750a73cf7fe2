"""The LlamaGen "before RL" policy: a released checkpoint, or a small one pretrained on the tokenized train split."""

from __future__ import annotations

from dataclasses import asdict

from rlar.config.schemas import from_options
from rlar.data.batches import ImageData
from rlar.policy.exported import folder_or_file
from rlar.policy.llamagen import LlamaGen, load_llamagen_state
from rlar.policy.prior import cached_prior, check_vocabulary, encoder_missing, needs_cached_encoder
from rlar.policy.schemas import LlamaGenSchema, RoPETransformerSchema
from rlar.runtime.cache import seeded
from rlar.text.encoder import TextEncoder
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
                      data: ImageData, text_encoder: TextEncoder | None = None, missing: str | None = None):
    """``policy`` with the weights of the cached prior ``name`` (pretrained on a miss, or ``missing``: an error),
    keyed by its architecture after the size preset."""
    resolved = {"n_layer": policy.n_layer, "n_head": policy.n_head, "dim": policy.n_embd}
    return cached_prior(policy, name, {**arch, **resolved}, tokenizer, data, asdict(spec.pretrain), spec.cache_dir,
                        text_encoder, missing)


def text_arch(spec: LlamaGenSchema, text_encoder: TextEncoder | None) -> dict:
    """``cls_token_num`` (and ``caption_dim`` for t2i): one class token, or the text encoder's caption tokens."""
    if text_encoder is None:
        return {"cls_token_num": spec.cls_token_num}
    if spec.cls_token_num not in (1, text_encoder.max_length):
        raise ValueError(f"policy.cls_token_num={spec.cls_token_num} but text_encoder.max_length="
                         f"{text_encoder.max_length}: a text-conditioned LlamaGen reads one condition token per "
                         f"caption token; set text_encoder.max_length={spec.cls_token_num} (or policy.cls_token_num=1)")
    return {"cls_token_num": text_encoder.max_length, "caption_dim": text_encoder.dim}


def build_llamagen_prior(tokenizer: FrozenTokenizer, data: ImageData, text_encoder: TextEncoder | None = None,
                         **options) -> LlamaGen:
    """A LlamaGen policy loaded strictly from ``checkpoint``, or from the cached prior (pretrained on a miss).
    ``options``: the fields of :class:`LlamaGenSchema`. With a ``text_encoder``: LlamaGen-T2I, reading its caption
    features (a trainable encoder gets the weights it was pretrained with)."""
    spec = from_options(LlamaGenSchema, options)
    arch = {**rope_transformer_arch(spec, tokenizer, data), **text_arch(spec, text_encoder)}
    with seeded(spec.pretrain.seed):  # a cached prior depends only on its key
        policy = LlamaGen(**arch, grad_checkpointing=spec.grad_checkpointing)
    if spec.checkpoint:
        if needs_cached_encoder(spec.checkpoint, text_encoder):
            cached_rope_prior(policy, "llamagen_prior", arch, spec, tokenizer, data, text_encoder,
                              encoder_missing(spec.checkpoint))
        return load_llamagen_state(policy, folder_or_file(spec.checkpoint, policy))
    return cached_rope_prior(policy, "llamagen_prior", arch, spec, tokenizer, data, text_encoder)
