"""FID, IS, precision, recall, density and coverage of Inception features: IS (over ADM's evaluator's splits of 5,000
samples), precision and recall by torch-fidelity's own functions, FID by ``rlar.eval.model.frechet`` (the same
distance, exact for the rank-deficient covariances of fewer samples than the 2048 features), density and coverage
by ``rlar.eval.model.manifold`` (which the tests check against their authors' implementation)."""

from __future__ import annotations

import math

import torch
from torch_fidelity.metric_isc import KEY_METRIC_ISC_MEAN, KEY_METRIC_ISC_STD, isc_features_to_metric
from torch_fidelity.metric_prc import KEY_METRIC_PRECISION, KEY_METRIC_RECALL, prc_features_to_metric

from rlar.eval.model.frechet import frechet_distance, gaussian_fit
from rlar.eval.model.manifold import DENSITY_COVERAGE_K, density_coverage

FID_MIN_IMAGES = 2  # FID fits a covariance to the samples and to the reference: at least 2 images each
PRC_BATCH = 1024  # rows of each k-NN distance block of precision / recall: [1024, max(N, M)] floats at a time
IS_SPLIT_SIZE = 5000  # samples per Inception Score split, as ADM's evaluator (compute_inception_score)


def inception_score(logits: torch.Tensor, split_size: int = IS_SPLIT_SIZE) -> tuple[float, float]:
    """Mean and std of exp E KL(p(y|x) || p(y)) over ``ceil(N / split_size)`` consecutive splits of ``logits [N, C]``
    in their given order (torch-fidelity's function, unshuffled): ADM's evaluator's splits of 5,000 samples where N
    is a multiple of 5,000 (50,000: 10 splits); otherwise equal splits of about 5,000 where ADM's last one is
    shorter. std: over the splits (ADM reports the mean only)."""
    isc = isc_features_to_metric(logits, splits=max(1, math.ceil(len(logits) / split_size)), shuffle=False)
    return isc[KEY_METRIC_ISC_MEAN], isc[KEY_METRIC_ISC_STD]


def check_reference_size(count: int, what: str) -> None:
    """Refuse (``ValueError``) a reference of fewer than ``FID_MIN_IMAGES`` images, ``what`` (its name), before any
    sample is drawn to compare with it."""
    if count < FID_MIN_IMAGES:
        raise ValueError(f"{what} holds {count} image(s), but FID fits a covariance to the reference and needs at "
                         f"least {FID_MIN_IMAGES}: give a reference of more images")


def inception_metrics(pool: torch.Tensor, logits: torch.Tensor, reference_pool: torch.Tensor,
                      reference_fit: tuple[torch.Tensor, torch.Tensor] | None = None, neighbours: int = 3,
                      coverage_neighbours: int = DENSITY_COVERAGE_K,
                      reference_radii: torch.Tensor | None = None) -> dict[str, float]:
    """``fid``, ``is``, ``is_std``, ``precision``, ``recall``, ``density``, ``coverage`` of samples
    (``pool [N, 2048]``, ``logits [N, 1008]``) against reference images (``reference_pool [M, 2048]``;
    ``reference_fit``: the Gaussian fit FID compares with, by default ``gaussian_fit(reference_pool)``; an ADM
    reference batch's stored ``mu`` and ``sigma`` otherwise; ``reference_radii``: its ``knn_radii`` for
    ``coverage_neighbours``, if already computed).

    FID: Fréchet distance of Gaussian fits of the pool features (N, M >= 2). IS: :func:`inception_score` (ADM's
    splits of 5,000 samples, in order). Precision / recall: improved precision and recall (k-NN
    manifolds of ``neighbours`` neighbours in the pool features): the fraction of samples inside the reference
    manifold, and of reference images inside the samples' (NaN unless both sets have more than ``neighbours``
    images), from distances computed ``PRC_BATCH`` rows at a time, never all N x M at once. Density / coverage:
    the same questions asked of the reference images' own balls (``coverage_neighbours``), which outlying samples
    cannot widen. All but IS and density depend on N and M: compare values at the same N and reference.
    """
    if min(len(pool), len(reference_pool)) < FID_MIN_IMAGES:
        raise ValueError(f"FID needs at least {FID_MIN_IMAGES} samples and {FID_MIN_IMAGES} reference images, got "
                         f"{len(pool)} and {len(reference_pool)}")
    fid = frechet_distance(*gaussian_fit(pool), *(reference_fit or gaussian_fit(reference_pool)))
    inception_mean, inception_std = inception_score(logits)
    prc = {KEY_METRIC_PRECISION: float("nan"), KEY_METRIC_RECALL: float("nan")}
    if min(len(pool), len(reference_pool)) > neighbours:
        prc = prc_features_to_metric(pool, reference_pool, prc_neighborhood=neighbours, prc_batch_size=PRC_BATCH,
                                     save_cpu_ram=True, verbose=False)
    density, coverage = density_coverage(reference_pool, pool, coverage_neighbours, reference_radii)
    return {"fid": fid, "is": inception_mean, "is_std": inception_std,
            "precision": prc[KEY_METRIC_PRECISION], "recall": prc[KEY_METRIC_RECALL], "density": density,
            "coverage": coverage}
