"""No-reference image-quality rewards (the ARPG seed): sharpness, contrast and saturation of a sample alone.

Each score clamps images to [-1, 1] and maps them to [0, 1] first, so it cannot grow by pushing pixels out of
range, and each is bounded: sharpness in [0, 16], contrast in [0, 0.5], saturation in [0, 1]. Grayscale is
BT.601 luma ``0.299 R + 0.587 G + 0.114 B`` (a 1-channel image is its own grayscale).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from rlar.contracts import Reward

LUMA = (0.299, 0.587, 0.114)
LAPLACIAN = ((0.0, 1.0, 0.0), (1.0, -4.0, 1.0), (0.0, 1.0, 0.0))


def as_rgb(images: torch.Tensor) -> torch.Tensor:
    """``[N, 1 or 3, H, W] -> [N, 3, H, W]``, a grayscale channel repeated."""
    if images.shape[1] not in (1, 3):
        raise ValueError(f"images must have 1 or 3 channels, got shape {tuple(images.shape)}")
    return images.expand(-1, 3, -1, -1)


def to_unit(images: torch.Tensor) -> torch.Tensor:
    """``[-1, 1] -> [0, 1]``, clamped (NaN stays NaN): ``[N, C, H, W]``."""
    return (images.float().clamp(-1, 1) + 1) / 2


def grayscale(images: torch.Tensor) -> torch.Tensor:
    """BT.601 luma of ``[N, 1 or 3, H, W]`` images: ``[N, 1, H, W]``."""
    if images.shape[1] == 1:
        return images
    return (as_rgb(images) * images.new_tensor(LUMA).view(1, 3, 1, 1)).sum(1, keepdim=True)


def sharpness(images: torch.Tensor) -> torch.Tensor:
    """Variance of the 4-neighbour Laplacian of the [0, 1] grayscale image (valid pixels only, no padded border).

    The Laplacian lies in [-4, 4], so the score is in [0, 16]; 16 is a one-pixel checkerboard: ``[N]``.
    """
    kernel = images.new_tensor(LAPLACIAN, dtype=torch.float32).view(1, 1, 3, 3)
    laplacian = F.conv2d(grayscale(to_unit(images)), kernel)  # [N, 1, H-2, W-2]
    return laplacian.flatten(1).var(1, unbiased=False)


def contrast(images: torch.Tensor) -> torch.Tensor:
    """Standard deviation of the [0, 1] grayscale intensity, in [0, 0.5] (0.5 = half black, half white): ``[N]``."""
    return grayscale(to_unit(images)).flatten(1).std(1, unbiased=False)


def saturation(images: torch.Tensor) -> torch.Tensor:
    """Mean HSV saturation ``(max - min) / max`` over RGB in [0, 1] (0 where max = 0, and for grayscale): ``[N]``."""
    rgb = as_rgb(to_unit(images))  # [N, 3, H, W]
    high, low = rgb.amax(1), rgb.amin(1)  # [N, H, W]
    return ((high - low) / high.clamp_min(1e-8)).flatten(1).mean(1)  # high = 0 implies high - low = 0


class QualityReward(Reward):
    """``reward(images, targets, meta) -> (score [N], {name: [N]})``; ``targets`` are ignored and may be None."""

    name: str

    def score(self, images: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def __call__(self, images: torch.Tensor, targets: torch.Tensor | None = None, meta: dict | None = None):
        reward = self.score(images)  # [N]
        return reward, {self.name: reward}


class SharpnessReward(QualityReward):
    """Rewards edges and detail: :func:`sharpness`."""

    name = "sharpness"
    score = staticmethod(sharpness)


class ContrastReward(QualityReward):
    """Rewards a spread of intensities: :func:`contrast`."""

    name = "contrast"
    score = staticmethod(contrast)


class SaturationReward(QualityReward):
    """Rewards vivid colour: :func:`saturation`."""

    name = "saturation"
    score = staticmethod(saturation)
