"""The conditions of data items: their class labels, or with a text encoder the features of their captions.

Captions are the data's: ``data.train_captions`` / ``data.eval_captions``, a caption per image (None: none); a
batch's are ``data.captions_of(indices)``. The loop (``batch_conditions``), the evaluation and the prior's held-out
cross-entropy turn them into conditions here (without gradients; the prior's pretraining encodes its captions with
them, through ``text_encoder.condition``).
"""

from __future__ import annotations

import hashlib

import torch

from rlar.policy.conditioning import Condition
from rlar.text.encoder import TextEncoder


def split_captions(data, split: str) -> list[str]:
    """``data.<split>_captions``; a clear error when the data has none."""
    captions = getattr(data, f"{split}_captions", None)
    if captions is None:
        raise ValueError(f"text_encoder is set but the data ({type(data).__name__}) has no {split}_captions: a text "
                         "condition needs a caption per image; use data with captions, or text_encoder=null for "
                         "class labels")
    return captions


def captions_fingerprint(data) -> str:
    """A hash of every caption of the train and eval splits (a text prior's cache key names its captions)."""
    digest = hashlib.sha1()
    for split in ("train", "eval"):
        captions = split_captions(data, split)
        for caption in getattr(captions, "own", captions):  # each file's own: not what replacements read so far
            digest.update(str(caption).encode() + b"\0")
    return digest.hexdigest()[:16]


@torch.no_grad()
def item_conditions(text_encoder: TextEncoder | None, labels: torch.Tensor, captions: list[str] | None,
                    device) -> Condition:
    """The conditions of items with ``labels [B]`` and ``captions`` (B strings, or None: the data has none), on
    ``device``: their labels, or with ``text_encoder`` the (frozen) features of their captions, carrying the
    labels."""
    labels = labels.to(device)
    if text_encoder is None:
        return Condition(labels)
    if captions is None:
        raise ValueError("text_encoder is set but the data has no captions: a text condition needs a caption per "
                         "item; use data with captions (data.captions=..., data.caption_column=..., data=prompts), "
                         "or text_encoder=null for class labels")
    return text_encoder.condition(list(captions), labels).to(device)
