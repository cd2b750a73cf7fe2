"""Structured-config schemas of the tokenizer options (registered as ``schema/tokenizer/<name>``)."""

from __future__ import annotations

from dataclasses import dataclass, field

from omegaconf import MISSING


@dataclass
class VQTrainSchema:
    steps: int = 600
    lr: float = 2e-3
    batch_size: int = 64
    seed: int = 0


@dataclass
class DigitsVQSchema:
    """The embedded VQ autoencoder, trained on the data on first use and cached (or loaded from ``checkpoint``)."""

    _target_: str = "rlar.tokenizer.build.build_digits_vq"
    codebook_size: int = 64
    embed_dim: int = 16
    hidden: int = 64
    checkpoint: str | None = None  # path to a trained DigitsVQ state dict; null = train and cache
    train: VQTrainSchema = field(default_factory=VQTrainSchema)
    cache_dir: str | None = None
    chunk_size: int = 256  # images decoded at a time


@dataclass
class LlamaGenVQSchema:
    _target_: str = "rlar.tokenizer.zoo_build.build_llamagen_vq"
    checkpoint: str = MISSING  # mandatory: no weights ship with rlar
    image_size: int = 256  # images the data gives; the code grid is image_size / the downsampling (16; VQ-8: 8)
    codebook_size: int = 16384
    codebook_embed_dim: int = 8
    codebook_l2_norm: bool = True
    ch: int = 128
    ch_mult: list[int] = field(default_factory=lambda: [1, 1, 2, 2, 4])
    num_res_blocks: int = 2
    z_channels: int = 256
    chunk_size: int = 32  # images encoded/decoded at a time


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
    checkpoint: str = MISSING  # mandatory: no weights ship with rlar
    image_size: int = 256  # images the data gives; the code grid is image_size / the downsampling (16; VQ-8: 8)
    codebook_size: int = 16384  # n_embed
    embed_dim: int = 256
    ddconfig: DDConfigSchema = field(default_factory=DDConfigSchema)
    chunk_size: int = 32  # images encoded/decoded at a time


@dataclass
class IBQSchema:
    _target_: str = "rlar.tokenizer.zoo_build.build_ibq"
    checkpoint: str = MISSING  # mandatory: no weights ship with rlar
    image_size: int = 256  # images the data gives; the code grid is image_size / the downsampling (16; VQ-8: 8)
    codebook_size: int = 262144  # n_embed
    embed_dim: int = 256
    ddconfig: DDConfigSchema = field(default_factory=lambda: DDConfigSchema(num_res_blocks=4))
    use_ema: bool = True  # the released files hold model_ema.*
    weights: str = "raw"  # raw | ema: the modules' weights, or their EMA copies model_ema.* (what SEED-Voken evaluates)
    chunk_size: int = 32  # images encoded/decoded at a time


TOKENIZER_SCHEMAS = {"digits_vq": DigitsVQSchema, "llamagen_vq": LlamaGenVQSchema, "taming_vqgan": TamingVQGANSchema,
                     "ibq": IBQSchema}
