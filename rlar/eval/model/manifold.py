"""Fidelity and diversity apart, in a feature space: improved precision and recall (k-nearest-neighbour
manifolds), density and coverage (the same balls around the real points only, so that outlying samples cannot
widen them), and the within-class spread of samples relative to the real data's."""

from __future__ import annotations

import math
from collections.abc import Iterator

import torch

# a distance matrix is computed a block of [ROWS, COLUMNS] at a time (float64: 32 MiB), whatever the set sizes
ROWS, COLUMNS = 512, 8192
DENSITY_COVERAGE_K = 5  # the neighbours of density's and coverage's balls (their authors' choice)


def blocks(n: int, m: int) -> Iterator[tuple[slice, slice]]:
    """The ``(rows, columns)`` of the blocks of an ``[n, m]`` matrix, row block by row block."""
    for i in range(0, n, ROWS):
        for j in range(0, m, COLUMNS):
            yield slice(i, i + ROWS), slice(j, j + COLUMNS)


def smallest_distances(points: torch.Tensor, reference: torch.Tensor, count: int) -> torch.Tensor:
    """``[N, count]``, ascending: the ``count`` smallest distances from each of ``points [N, F]`` to ``reference
    [M, F]`` (M >= count), a block at a time."""
    best = torch.full((len(points), count), math.inf, dtype=points.dtype, device=points.device)  # [N, count]
    for rows, cols in blocks(len(points), len(reference)):
        candidates = torch.cat([best[rows], torch.cdist(points[rows], reference[cols])], 1)  # [r, count + c]
        best[rows] = candidates.topk(count, dim=1, largest=False).values
    return best


def knn_radii(features: torch.Tensor, k: int) -> torch.Tensor:
    """``[N]``: each point's distance to its k-th nearest other point of ``features [N, F]`` (N > k)."""
    return smallest_distances(features, features, k + 1)[:, k]  # the nearest (distance 0) is the point itself


def ball_blocks(points: torch.Tensor, centres: torch.Tensor, radii: torch.Tensor
                ) -> Iterator[tuple[slice, slice, torch.Tensor]]:
    """``(rows, columns, inside [r, c] bool)``: which of ``points [N, F]`` lie in which ball (``centres [M, F]``,
    ``radii [M]``, boundary included), a block at a time."""
    for rows, cols in blocks(len(points), len(centres)):
        yield rows, cols, torch.cdist(points[rows], centres[cols]) <= radii[None, cols]


def coverage(points: torch.Tensor, centres: torch.Tensor, radii: torch.Tensor) -> float:
    """The fraction of ``points [N, F]`` inside some ball (``centres [M, F]``, ``radii [M]``, boundary included)."""
    inside = torch.zeros(len(points), dtype=torch.bool)  # [N]
    for rows, _, block in ball_blocks(points, centres, radii):
        inside[rows] |= block.any(1)
    return float(inside.double().mean())


def precision_recall(real: torch.Tensor, fake: torch.Tensor, k: int = 3) -> tuple[float, float]:
    """Improved precision (samples ``fake [N, F]`` inside the real manifold: the union of the balls around each
    ``real [M, F]`` point reaching its k-th nearest real neighbour) and recall (real points inside the samples'
    manifold); NaN unless both sets have more than ``k`` points. In float64."""
    if min(len(real), len(fake)) <= k:
        return float("nan"), float("nan")
    real, fake = real.double().cpu(), fake.double().cpu()
    return coverage(fake, real, knn_radii(real, k)), coverage(real, fake, knn_radii(fake, k))


def real_balls(real: torch.Tensor, k: int = DENSITY_COVERAGE_K) -> torch.Tensor | None:
    """``[M]``: the radii of density's and coverage's balls around ``real [M, F]`` (float64), to compute once for a
    fixed reference; None where there are no more than ``k`` points (the metrics are NaN)."""
    return knn_radii(real.double().cpu(), k) if len(real) > k else None


def density_coverage(real: torch.Tensor, fake: torch.Tensor, k: int = DENSITY_COVERAGE_K,
                     real_radii: torch.Tensor | None = None) -> tuple[float, float]:
    """Density (how many real points' balls hold a sample, averaged over ``fake [N, F]`` and divided by ``k``: 1 for
    samples distributed like ``real [M, F]``, above 1 where they crowd the dense regions) and coverage (the fraction
    of real points whose ball holds some sample), each ball reaching the real point's k-th nearest real neighbour
    (``real_radii [M]``: :func:`real_balls` of ``real``, if already computed); NaN unless ``real`` has more
    than ``k`` points and ``fake`` any. In float64."""
    if len(real) <= k or not len(fake):
        return float("nan"), float("nan")
    real, fake = real.double().cpu(), fake.double().cpu()
    radii = real_balls(real, k) if real_radii is None else real_radii  # [M]
    balls_held = torch.zeros(len(real), dtype=torch.bool)  # [M]
    memberships = 0.0
    for _, cols, inside in ball_blocks(fake, real, radii):
        memberships += float(inside.sum())
        balls_held[cols] |= inside.any(0)
    return memberships / (k * len(fake)), float(balls_held.double().mean())


def class_spreads(features: torch.Tensor, labels: torch.Tensor) -> dict[int, float]:
    """``{class: mean distance between two distinct points of that class}`` over the classes of ``labels [N]`` with
    at least 2 of ``features [N, F]``; each class's distances summed a block at a time."""
    spreads = {}
    for c in labels.unique().tolist():
        x = features[labels == c].double().cpu()  # [n_c, F]
        n = len(x)
        if n >= 2:
            total = sum(torch.cdist(x[rows], x[cols]).sum() for rows, cols in blocks(n, n))
            spreads[c] = float(total / (n * (n - 1)))
    return spreads


def relative_diversity(real: torch.Tensor, real_labels: torch.Tensor, fake: torch.Tensor,
                       fake_labels: torch.Tensor) -> float:
    """The samples' mean within-class spread over the real data's, over the classes both have 2+ points of: 1 = as
    varied within a class as the data, 0 = one image per class (mode collapse). NaN when no class qualifies."""
    real_spread, fake_spread = class_spreads(real, real_labels), class_spreads(fake, fake_labels)
    shared = sorted(real_spread.keys() & fake_spread.keys())
    if not shared:
        return float("nan")
    return sum(fake_spread[c] for c in shared) / sum(real_spread[c] for c in shared)
