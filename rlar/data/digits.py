"""scikit-learn's bundled handwritten digits (1,797 8x8 grayscale images, 10 classes), no download needed."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from sklearn.datasets import load_digits

from rlar.data.batches import ImageData, holdout_split
from rlar.data.captions import attribute_captions

CAPTIONS = ("attributes",)  # data.captions: null (none) or one of these


class DigitsData(ImageData):
    """Digits resized to ``image_size``, in [-1, 1], with a fixed held-out evaluation split. ``captions="attributes"``
    gives each image the caption of its class and measured attributes (``rlar.data.captions``: "a thick seven
    leaning right").

    (A plain class, not a dataclass: Hydra would turn a dataclass passed to ``instantiate`` into a config.)
    """

    def __init__(self, image_size: int = 32, eval_fraction: float = 0.2, split_seed: int = 0,
                 captions: str | None = None):
        if captions is not None and captions not in CAPTIONS:
            raise ValueError(f"data.captions={captions!r} is not available; choose one of {CAPTIONS} or null (none)")
        self.image_size, self.eval_fraction, self.split_seed = image_size, eval_fraction, split_seed
        self.captions = captions
        digits = load_digits()
        images = torch.tensor(digits.images, dtype=torch.float32)[:, None] / 16.0  # [1797, 1, 8, 8] in [0, 1]
        images = F.interpolate(images, size=self.image_size, mode="bilinear", align_corners=False)
        images = (images.clamp(0, 1) * 2 - 1).contiguous()  # [N, 1, S, S] in [-1, 1]
        labels = torch.tensor(digits.target, dtype=torch.long)
        train_idx, eval_idx = holdout_split(len(images), eval_fraction, split_seed)
        self.eval_images, self.eval_labels = images[eval_idx], labels[eval_idx]
        self.train_images, self.train_labels = images[train_idx], labels[train_idx]
        self.num_classes = 10
        self.channels = 1
        if captions == "attributes":
            self.train_captions = attribute_captions(self.train_images, self.train_labels)
            self.eval_captions = attribute_captions(self.eval_images, self.eval_labels)

    def fingerprint(self) -> dict:
        """What the images and labels depend on (the cache key of what is trained on them; captions do not change
        them)."""
        return {"name": "digits", "image_size": self.image_size, "eval_fraction": self.eval_fraction,
                "split_seed": self.split_seed}
