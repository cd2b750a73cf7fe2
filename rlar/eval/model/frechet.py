"""The Fréchet distance between Gaussian fits of two feature sets (FID's formula, in any feature space)."""

from __future__ import annotations

import torch


def gaussian_fit(features: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Mean ``[F]`` and unbiased covariance ``[F, F]`` of ``features [N, F]`` (N >= 2), in float64."""
    if len(features) < 2:
        raise ValueError(f"a Gaussian fit needs at least 2 feature vectors, got {len(features)}")
    x = features.detach().double().cpu()
    return x.mean(0), torch.cov(x.T).reshape(x.shape[1], x.shape[1])  # [F, F] even for F = 1


def frechet_distance(mean1: torch.Tensor, cov1: torch.Tensor, mean2: torch.Tensor, cov2: torch.Tensor) -> float:
    """``|m1 - m2|^2 + tr(C1 + C2 - 2 (C1 C2)^(1/2))`` between N(m1, C1) and N(m2, C2).

    ``tr (C1 C2)^(1/2)`` is taken as ``tr (C1^(1/2) C2 C1^(1/2))^(1/2)`` (the same eigenvalues), the square
    roots of symmetric positive semi-definite matrices by ``torch.linalg.eigh``: exact for the rank-deficient
    covariances of few samples, with no complex round-off. Computed in float64; clamped at 0 (round-off in the
    square roots of near-zero eigenvalues could make identical sets score a hair below it).
    """
    mean1, cov1, mean2, cov2 = (t.double().cpu() for t in (mean1, cov1, mean2, cov2))
    values, vectors = torch.linalg.eigh(cov1)
    root1 = vectors @ torch.diag(values.clamp_min(0).sqrt()) @ vectors.T  # C1^(1/2)
    middle = root1 @ cov2 @ root1
    cross = torch.linalg.eigvalsh((middle + middle.T) / 2).clamp_min(0).sqrt().sum()
    return max(0.0, float((mean1 - mean2).square().sum() + cov1.trace() + cov2.trace() - 2 * cross))
