"""Attributes measured from a digit's pixels: stroke thickness from its ink mass, slant from its image moments.

Images ``[N, C, H, W]`` in [-1, 1] (the data's range and the tokenizer's decoded range): ink is ``(x + 1) / 2`` of
the channel mean, 0 on the background, 1 on a full stroke. Each attribute has three grades, cut at the tertiles of
the measure among the train digits *of the same class* (a thick one has less ink than a thin eight), fitted once on
the embedded digits' train split and stored below, so that captions, rewards and evaluation grade alike.
"""

from __future__ import annotations

import torch

# Fitted by :func:`fit_tertiles` on the train split of data=digits (image_size 32, eval_fraction 0.2, split_seed 0;
# tests/test_captions.py recomputes them): row k holds class k's lower and upper tertile.
MASS_TERTILES = torch.tensor([
    [0.2897135317325592, 0.3317057192325592], [0.2919921875, 0.318359375], [0.2900390625, 0.3206380307674408],
    [0.28125, 0.318359375], [0.2985025942325592, 0.3203125], [0.2884114682674408, 0.31640625],
    [0.2822265625, 0.3212890625], [0.2838541567325592, 0.3115234375], [0.3069661557674408, 0.3369140625],
    [0.2890625, 0.326171875],
])
SKEW_TERTILES = torch.tensor([
    [-0.05197625234723091, -0.00018098270811606199], [-0.058884359896183014, 0.024773020297288895],
    [-0.17317605018615723, -0.10006232559680939], [-0.10676588863134384, -0.03793396055698395],
    [-0.018420809879899025, 0.034188009798526764], [-0.04614020884037018, 0.040766894817352295],
    [-0.23427020013332367, -0.17226319015026093], [0.10409270972013474, 0.16418740153312683],
    [-0.04299291968345642, 0.03526204451918602], [-0.1275089830160141, -0.0648040622472763],
])


def ink(images: torch.Tensor) -> torch.Tensor:
    """``[N, C, H, W]`` in [-1, 1] -> ink ``[N, H, W]`` in [0, 1] (the channel mean, background 0)."""
    return ((images.float().mean(1) + 1) / 2).clamp(0, 1)


def ink_mass(images: torch.Tensor) -> torch.Tensor:
    """The inked fraction of the image area, ``mean(ink)`` per image: ``[N]`` in [0, 1]."""
    return ink(images).mean((1, 2))


def slant_skew(images: torch.Tensor) -> torch.Tensor:
    """``-mu11 / mu02`` per image ``[N]``: the ink's second-order central moments (x the column, y the row, which
    grows downward), i.e. how far the stroke moves right per row upward. Positive: the top leans right; 0 for a
    vertical stroke, and for a blank image."""
    w = ink(images)  # [N, H, W]
    _, h, width = w.shape
    ys = torch.arange(h, dtype=w.dtype, device=w.device)[:, None]  # [H, 1]
    xs = torch.arange(width, dtype=w.dtype, device=w.device)[None, :]  # [1, W]
    mass = w.sum((1, 2)).clamp_min(1e-12)  # [N]
    dy = ys - ((w * ys).sum((1, 2)) / mass)[:, None, None]  # [N, H, 1]
    dx = xs - ((w * xs).sum((1, 2)) / mass)[:, None, None]  # [N, 1, W]
    mu11 = (w * dx * dy).sum((1, 2))
    mu02 = (w * dy * dy).sum((1, 2))
    return torch.where(mu02 > 0, -mu11 / mu02.clamp_min(1e-12), torch.zeros_like(mu11))


def fit_tertiles(values: torch.Tensor, labels: torch.Tensor, num_classes: int) -> torch.Tensor:
    """Each class's lower and upper tertile of ``values [N]``: ``[num_classes, 2]``."""
    q = torch.tensor([1 / 3, 2 / 3], dtype=values.dtype)
    return torch.stack([torch.quantile(values[labels == k], q) for k in range(num_classes)])


def grade(values: torch.Tensor, classes: torch.Tensor, tertiles: torch.Tensor) -> torch.Tensor:
    """Grade 0, 1 or 2 ``[N]`` of ``values [N]`` against the tertiles ``[K, 2]`` of each item's class ``[N]``:
    0 up to the lower tertile, 2 above the upper, 1 between."""
    classes = torch.as_tensor(classes).long().cpu()
    if len(classes) and (classes.min() < 0 or classes.max() >= len(tertiles)):
        raise ValueError(f"attributes are graded within a digit class 0..{len(tertiles) - 1}, got classes "
                         f"{sorted(set(classes.tolist()))}")
    t = tertiles[classes].to(values.device)  # [N, 2]
    return (values > t[:, 0]).long() + (values > t[:, 1]).long()


def thickness(images: torch.Tensor, classes: torch.Tensor) -> torch.Tensor:
    """The thickness grade ``[N]`` of each image as a digit of ``classes [N]``: 0 thin, 1 medium, 2 thick."""
    return grade(ink_mass(images), classes, MASS_TERTILES)


def slant(images: torch.Tensor, classes: torch.Tensor) -> torch.Tensor:
    """The slant grade ``[N]`` of each image as a digit of ``classes [N]``: 0 leaning left, 1 upright, 2 leaning
    right (of that class's train digits)."""
    return grade(slant_skew(images), classes, SKEW_TERTILES)
