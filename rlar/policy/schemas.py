"""Structured-config schemas of the policy options beyond rlar's GPT (registered as ``schema/policy/<name>``)."""

from __future__ import annotations

from dataclasses import dataclass, field

from omegaconf import MISSING

from rlar.config.schemas import PretrainSchema


@dataclass
class RoPETransformerSchema:
    """The options LlamaGen and ARPG share (both Llama-style transformers with 2D RoPE over the image grid)."""
    vocab_size: int = MISSING
    block_size: int | None = None
    size: str | None = None
    n_layer: int = 2
    n_head: int = 4
    dim: int = 96
    multiple_of: int = 256
    ffn_dim_multiplier: float | None = None
    rope_base: float = 10000.0
    norm_eps: float = 1e-5
    dropout: float = 0.0
    checkpoint: str | None = None
    pretrain: PretrainSchema = field(default_factory=PretrainSchema)
    cache_dir: str | None = None


@dataclass
class LlamaGenSchema(RoPETransformerSchema):
    _target_: str = "rlar.policy.llamagen_build.build_llamagen_prior"
    cls_token_num: int = 1


@dataclass
class ParallelDecodingSchema:
    num_iter: int = 16
    schedule: str = "arccos"
    cfg_schedule: str = "constant"


@dataclass
class ARPGSchema(RoPETransformerSchema):
    _target_: str = "rlar.policy.arpg_build.build_arpg_prior"
    n_layer: int = 4
    decoding: ParallelDecodingSchema = field(default_factory=ParallelDecodingSchema)


POLICY_SCHEMAS = {"llamagen": LlamaGenSchema, "arpg": ARPGSchema}
