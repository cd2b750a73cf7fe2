"""Checks of what the data and the tokenizer imply, from the config alone: channels and tokens per image."""

from __future__ import annotations

from omegaconf import DictConfig

ZOO = "rlar.tokenizer.zoo_build."  # the public tokenizers: RGB in, RGB out
PROMPT_ONLY = "rlar.data.prompts.PromptData"  # data without images


def has_images(data: DictConfig | dict) -> bool:
    """Whether a data config (``cfg.data``, or a reward's ``data``) gives images: every option but ``prompts``."""
    return data.get("_target_") != PROMPT_ONLY


def data_channels(cfg: DictConfig) -> int:
    """Channels of the data's images: ``data.channels``, or the embedded digits' 1."""
    return cfg.data.get("channels", 1)


def tokenizer_channels(cfg: DictConfig) -> int | None:
    """Channels the tokenizer reads: the public ones 3 (taming's ``ddconfig.in_channels``); the embedded one is
    trained on the data's (None: any)."""
    tok = cfg.tokenizer
    if not str(tok.get("_target_", "")).startswith(ZOO):
        return None
    return tok.ddconfig.in_channels if "ddconfig" in tok else 3


def tokens_per_image(cfg: DictConfig) -> int | None:
    """T, the codes per image: the embedded tokenizer downsamples by 4, the public ones by 2**(len(ch_mult)-1)."""
    tok = cfg.tokenizer
    if str(tok.get("_target_", "")).endswith("build_digits_vq"):
        return (cfg.data.image_size // 4) ** 2
    ch_mult = tok.ddconfig.ch_mult if "ddconfig" in tok else tok.get("ch_mult")
    if ch_mult is None or "image_size" not in tok:
        return None
    return (tok.image_size // 2 ** (len(ch_mult) - 1)) ** 2
