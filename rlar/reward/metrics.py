"""Full-reference image metrics as rewards: PSNR and SSIM of a decoded sample against its target (higher is better)."""

from __future__ import annotations

import torch
from torchmetrics.functional.image import structural_similarity_index_measure

from rlar.contracts import Reward

DATA_RANGE = 2.0  # images are in [-1, 1]
MIN_MSE = 1e-10  # identical images get a finite PSNR (100 dB + 10 log10(4)) instead of inf


def psnr(images: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Per-item PSNR in dB, ``10 log10(range^2 / max(mse, 1e-10))`` with range 2: ``[N]``."""
    mse = (images.float() - targets.float()).pow(2).flatten(1).mean(1)  # [N]
    return 10 * torch.log10(DATA_RANGE**2 / mse.clamp_min(MIN_MSE))


class PSNRReward(Reward):
    """``reward(images, targets, meta) -> (psnr [N], {"psnr": [N]})``."""

    reads_targets = True

    def __call__(self, images: torch.Tensor, targets: torch.Tensor, meta: dict | None = None):
        reward = psnr(images, targets)  # [N]
        return reward, {"psnr": reward}


class SSIMReward(Reward):
    """``reward(images, targets, meta) -> (ssim [N], {"ssim": [N]})``: torchmetrics' Gaussian-window SSIM per item."""

    reads_targets = True

    def __init__(self, kernel_size: int = 11, sigma: float = 1.5):
        self.kernel_size = kernel_size
        self.sigma = sigma

    def __call__(self, images: torch.Tensor, targets: torch.Tensor, meta: dict | None = None):
        reward = structural_similarity_index_measure(
            images.float(), targets.float(), kernel_size=self.kernel_size, sigma=self.sigma,
            reduction="none", data_range=DATA_RANGE)  # [N]
        return reward, {"ssim": reward}
