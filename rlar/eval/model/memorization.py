"""Copies of the train split: the share of samples nearer a train image than all but the closest few held-out images
are. The judge's other metrics compare samples with held-out images only, so a generator that reproduces its
training images scores like the data on them; this is the figure that tells the two apart."""

from __future__ import annotations

import torch

from rlar.eval.model.manifold import smallest_distances

COPY_QUANTILE = 0.05  # held-out images nearer the train split than the threshold: 5 %, by construction
# the train images the samples are compared with: a larger split's fixed random subset of this many (FID's 50,000),
# so that the judge's cost does not grow with the split (all of the digits' 1,438)
TRAIN_IMAGES = 50_000
TRAIN_SEED = 0  # fixes that subset (batches.random_rows): the judge and the rewards' classifiers read the same one


def nearest_distances(points: torch.Tensor, reference: torch.Tensor) -> torch.Tensor:
    """``[N]``: the distance from each of ``points [N, F]`` to its nearest point of ``reference [T, F]`` (float64)."""
    return smallest_distances(points.double().cpu(), reference.double().cpu(), 1)[:, 0]


def copy_threshold(held_out: torch.Tensor, train: torch.Tensor, quantile: float = COPY_QUANTILE) -> float:
    """The ``quantile`` of the distances from ``held_out [M, F]`` (images the generator never saw) to their nearest
    ``train [T, F]`` image: how near a novel image comes to the train split by chance."""
    return float(nearest_distances(held_out, train).quantile(quantile))


def memorization(samples: torch.Tensor, train: torch.Tensor, threshold: float) -> float:
    """The fraction of ``samples [N, F]`` within ``threshold`` of some ``train [T, F]`` image (boundary included):
    about ``COPY_QUANTILE`` for samples as novel as held-out images, 1 when every sample copies a train image; NaN
    without samples or train images."""
    if not (len(samples) and len(train)):
        return float("nan")
    return float((nearest_distances(samples, train) <= threshold).double().mean())
