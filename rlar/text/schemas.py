"""Structured-config schemas of the text encoders (registered as ``schema/text_encoder/<name>``). No text encoder
(``text_encoder: null``, the default) keeps every policy class-conditional."""

from __future__ import annotations

from dataclasses import dataclass, field

from omegaconf import MISSING

from rlar.text.embedded import DIGIT_WORDS


@dataclass
class HFTextSchema:
    # a local folder with config.json, the weights and the tokenizer files; never downloaded
    model_path: str = MISSING
    max_length: int = 120  # caption tokens (padded, truncated): the policy's condition tokens
    dtype: str = "float32"  # float32 | bfloat16 | float16: the encoder's weights
    batch_size: int = 32  # captions encoded at a time (each caption once: its features are kept)
    # a folder of per-caption features (safetensors named by a hash of caption and model); null = memory only
    feature_cache: str | None = None
    memory_cache_size: int = 65536  # captions whose features stay in memory (least recently used out first)
    lowercase: bool = False  # lower-case each caption before tokenizing (as LlamaGen-T2I's T5 captions are)


@dataclass
class T5TextSchema(HFTextSchema):
    """transformers.T5EncoderModel, e.g. FLAN-T5-XL (width 2048) for LlamaGen-T2I, 120 tokens."""

    _target_: str = "rlar.text.hf_encoders.T5TextEncoder"


@dataclass
class CLIPTextSchema(HFTextSchema):
    """transformers.CLIPTextModel: the text tower of a CLIP model."""

    _target_: str = "rlar.text.hf_encoders.CLIPTextEncoder"
    max_length: int = 77  # at most the model's positions


@dataclass
class EmbeddedTextSchema:
    """A small transformer over a word vocabulary, trained with the text-conditioned prior, frozen in RL."""

    _target_: str = "rlar.text.embedded.EmbeddedTextEncoder"
    vocabulary: list[str] = field(default_factory=lambda: list(DIGIT_WORDS))  # other words read as <unk>
    max_length: int = 16  # <cls> and up to 15 words
    width: int = 64  # the features' width E
    n_layer: int = 2
    n_head: int = 4


TEXT_ENCODER_SCHEMAS = {"t5": T5TextSchema, "clip": CLIPTextSchema, "embedded": EmbeddedTextSchema}
