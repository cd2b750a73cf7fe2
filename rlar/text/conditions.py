"""The conditions of data items: their class labels, or with a text encoder the features of their captions.

Captions are read from the data: ``data.train_captions`` / ``data.eval_captions``, lists of str parallel to the
images (``captions_of``). This is the one place where the loop, the evaluation and the prior's pretraining read
them.
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


def captions_of(data, split: str, indices: torch.Tensor) -> list[str]:
    """The captions of the items ``indices [B]`` of ``split`` (train or eval)."""
    captions = split_captions(data, split)
    return [str(captions[i]) for i in indices.tolist()]


def captions_fingerprint(data) -> str:
    """A hash of every caption of the train and eval splits (a text prior's cache key names its captions)."""
    digest = hashlib.sha1()
    for split in ("train", "eval"):
        for caption in split_captions(data, split):
            digest.update(str(caption).encode() + b"\0")
    return digest.hexdigest()[:16]


@torch.no_grad()
def item_conditions(text_encoder: TextEncoder | None, data, split: str, labels: torch.Tensor,
                    indices: torch.Tensor, device) -> Condition:
    """The conditions of the items ``indices [B]`` (labels ``[B]``) of ``split``, on ``device``: their labels, or
    with ``text_encoder`` the (frozen) features of their captions, carrying the labels."""
    labels = labels.to(device)
    if text_encoder is None:
        return Condition(labels)
    return text_encoder.condition(captions_of(data, split, indices), labels).to(device)
