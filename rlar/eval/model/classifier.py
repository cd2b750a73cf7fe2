"""A small CNN classifier: three conv blocks -> a penultimate feature vector -> class logits."""

from __future__ import annotations

from itertools import pairwise

import torch
import torch.nn.functional as F
from torch import nn


class DigitsClassifier(nn.Module):
    """Images ``[N, C, H, W]`` in [-1, 1], resized to ``input_size`` -> logits ``[N, num_classes]``.

    Blocks of (3x3 conv, ReLU, 2x2 max-pool) with ``width``, ``2 width``, ``4 width`` channels, then a linear
    layer and ReLU to ``features`` dims (the space of ``eval/fd``), then a linear layer to the logits.
    """

    def __init__(self, channels: int = 1, num_classes: int = 10, input_size: int = 32, width: int = 16,
                 features: int = 128):
        super().__init__()
        if input_size % 8:
            raise ValueError(f"eval.classifier_model.input_size must be a multiple of 8 (three 2x2 poolings), "
                             f"got {input_size}")
        self.input_size = input_size
        widths = (channels, width, 2 * width, 4 * width)
        self.blocks = nn.ModuleList(nn.Conv2d(c_in, c_out, 3, padding=1) for c_in, c_out in pairwise(widths))
        self.embed = nn.Linear(widths[-1] * (input_size // 8) ** 2, features)
        self.head = nn.Linear(features, num_classes)

    def block_outputs(self, images: torch.Tensor) -> list[torch.Tensor]:
        """Each block's ReLU activations, before pooling: ``[N, w_l, S_l, S_l]`` for S_l = S, S/2, S/4."""
        x = images.float()
        if x.shape[-2:] != (self.input_size, self.input_size):
            x = F.interpolate(x, size=self.input_size, mode="bilinear", align_corners=False, antialias=True)
        outputs = []
        for conv in self.blocks:
            x = F.relu(conv(x))
            outputs.append(x)
            x = F.max_pool2d(x, 2)
        return outputs

    def features(self, images: torch.Tensor) -> torch.Tensor:
        """The penultimate features ``[N, features]``."""
        last = F.max_pool2d(self.block_outputs(images)[-1], 2)  # [N, 4 width, S/8, S/8]
        return F.relu(self.embed(last.flatten(1)))

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(images))
