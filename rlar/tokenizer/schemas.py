"""Structured-config schemas of the published tokenizers (registered under ``schema/tokenizer``)."""

from __future__ import annotations

from dataclasses import dataclass, field

from omegaconf import MISSING


@dataclass
class LlamaGenVQSchema:
    _target_: str = "rlar.tokenizer.zoo_build.build_llamagen_vq"
    checkpoint: str = MISSING
    image_size: int = 256
    codebook_size: int = 16384
    codebook_embed_dim: int = 8
    codebook_l2_norm: bool = True
    ch: int = 128
    ch_mult: list[int] = field(default_factory=lambda: [1, 1, 2, 2, 4])
    num_res_blocks: int = 2
    z_channels: int = 256
    chunk_size: int = 32


@dataclass
class DDConfigSchema:
    """taming's ``ddconfig`` (shared by the encoder and the decoder)."""

    double_z: bool = False
    z_channels: int = 256
    resolution: int = 256
    in_channels: int = 3
    out_ch: int = 3
    ch: int = 128
    ch_mult: list[int] = field(default_factory=lambda: [1, 1, 2, 2, 4])
    num_res_blocks: int = 2
    attn_resolutions: list[int] = field(default_factory=lambda: [16])
    dropout: float = 0.0


@dataclass
class TamingVQGANSchema:
    _target_: str = "rlar.tokenizer.zoo_build.build_taming_vqgan"
    checkpoint: str = MISSING
    image_size: int = 256
    codebook_size: int = 16384
    embed_dim: int = 256
    ddconfig: DDConfigSchema = field(default_factory=DDConfigSchema)
    chunk_size: int = 32


@dataclass
class IBQSchema:
    _target_: str = "rlar.tokenizer.zoo_build.build_ibq"
    checkpoint: str = MISSING
    image_size: int = 256
    codebook_size: int = 262144
    embed_dim: int = 256
    ddconfig: DDConfigSchema = field(default_factory=lambda: DDConfigSchema(num_res_blocks=4))
    use_ema: bool = True
    chunk_size: int = 32


TOKENIZER_SCHEMAS = {"llamagen_vq": LlamaGenVQSchema, "taming_vqgan": TamingVQGANSchema, "ibq": IBQSchema}
