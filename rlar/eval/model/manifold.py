"""Fidelity and diversity apart, in a feature space: improved precision and recall (k-nearest-neighbour
manifolds), density and coverage (the same balls around the real points only, so that outlying samples cannot
widen them), and the within-class spread of samples relative to the real data's."""

from __future__ import annotations

import torch

ROWS = 512  # rows of a distance matrix at a time: [512, M] float64, whatever the set sizes
DENSITY_COVERAGE_K = 5  # the neighbours of density's and coverage's balls (their authors' choice)


def knn_radii(features: torch.Tensor, k: int) -> torch.Tensor:
    """``[N]``: each point's distance to its k-th nearest other point of ``features [N, F]`` (N > k)."""
    # [rows, N] distances, 0 to the point itself: the first of its k + 1 nearest
    return torch.cat([torch.cdist(x, features).kthvalue(k + 1, dim=1).values for x in features.split(ROWS)])


def coverage(points: torch.Tensor, centres: torch.Tensor, radii: torch.Tensor) -> float:
    """The fraction of ``points [N, F]`` inside some ball (``centres [M, F]``, ``radii [M]``, boundary included)."""
    inside = torch.cat([(torch.cdist(x, centres) <= radii[None]).any(1) for x in points.split(ROWS)])  # [N]
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
    for x in fake.split(ROWS):
        inside = torch.cdist(x, real) <= radii[None]  # [rows, M]
        memberships += float(inside.sum())
        balls_held |= inside.any(0)
    return memberships / (k * len(fake)), float(balls_held.double().mean())


def class_spreads(features: torch.Tensor, labels: torch.Tensor) -> dict[int, float]:
    """``{class: mean distance between two distinct points of that class}`` over the classes of ``labels [N]`` with
    at least 2 of ``features [N, F]``."""
    spreads = {}
    for c in labels.unique().tolist():
        x = features[labels == c].double().cpu()  # [n_c, F]
        n = len(x)
        if n >= 2:
            spreads[c] = float(torch.cdist(x, x).sum() / (n * (n - 1)))
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
