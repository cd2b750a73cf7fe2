"""The run's text encoder from its config (``text_encoder``; null: none, class labels)."""

from __future__ import annotations

from hydra.utils import instantiate
from omegaconf import DictConfig

from rlar.runtime.cache import seeded
from rlar.text.encoder import TextEncoder


def build_text_encoder(cfg: DictConfig, device=None) -> TextEncoder | None:
    """``cfg.text_encoder`` built (on ``device``, default the CPU), or None when the config has none."""
    if cfg.get("text_encoder") is None:
        return None
    with seeded(0):  # a trainable encoder's initial weights, which the cached text prior is pretrained from
        return instantiate(cfg.text_encoder).to(device or "cpu")
