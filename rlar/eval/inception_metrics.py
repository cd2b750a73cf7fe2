"""FID, IS, precision, recall, density and coverage of Inception features: IS, precision and recall by
torch-fidelity's own functions, FID by ``rlar.eval.model.frechet`` (the same distance, exact for the rank-deficient
covariances of fewer samples than the 2048 features), density and coverage by ``rlar.eval.model.manifold`` (which
the tests check against their authors' implementation)."""

from __future__ import annotations

import torch
from torch_fidelity.metric_isc import KEY_METRIC_ISC_MEAN, KEY_METRIC_ISC_STD, isc_features_to_metric
from torch_fidelity.metric_prc import KEY_METRIC_PRECISION, KEY_METRIC_RECALL, prc_features_to_metric

from rlar.eval.model.frechet import frechet_distance, gaussian_fit
from rlar.eval.model.manifold import DENSITY_COVERAGE_K, density_coverage

PRC_BATCH = 1024  # rows of each k-NN distance block of precision / recall: [1024, max(N, M)] floats at a time


def inception_metrics(pool: torch.Tensor, logits: torch.Tensor, reference_pool: torch.Tensor,
                      reference_fit: tuple[torch.Tensor, torch.Tensor] | None = None, is_splits: int = 10,
                      neighbours: int = 3, coverage_neighbours: int = DENSITY_COVERAGE_K,
                      reference_radii: torch.Tensor | None = None) -> dict[str, float]:
    """``fid``, ``is``, ``is_std``, ``precision``, ``recall``, ``density``, ``coverage`` of samples
    (``pool [N, 2048]``, ``logits [N, 1008]``) against reference images (``reference_pool [M, 2048]``;
    ``reference_fit``: its ``gaussian_fit``, ``reference_radii``: its ``knn_radii`` for ``coverage_neighbours``, if
    already computed).

    FID: Fréchet distance of Gaussian fits of the pool features (N, M >= 2). IS: exp E KL(p(y|x) || p(y)) over
    ``min(is_splits, N)`` splits, mean and std. Precision / recall: improved precision and recall (k-NN
    manifolds of ``neighbours`` neighbours in the pool features): the fraction of samples inside the reference
    manifold, and of reference images inside the samples' (NaN unless both sets have more than ``neighbours``
    images), from distances computed ``PRC_BATCH`` rows at a time, never all N x M at once. Density / coverage:
    the same questions asked of the reference images' own balls (``coverage_neighbours``), which outlying samples
    cannot widen. All but IS and density depend on N and M: compare values at the same N and reference.
    """
    if len(pool) < 2 or len(reference_pool) < 2:
        raise ValueError(f"FID needs at least 2 samples and 2 reference images, got {len(pool)} and "
                         f"{len(reference_pool)}")
    fid = frechet_distance(*gaussian_fit(pool), *(reference_fit or gaussian_fit(reference_pool)))
    isc = isc_features_to_metric(logits, splits=min(is_splits, len(logits)))
    prc = {KEY_METRIC_PRECISION: float("nan"), KEY_METRIC_RECALL: float("nan")}
    if min(len(pool), len(reference_pool)) > neighbours:
        prc = prc_features_to_metric(pool, reference_pool, prc_neighborhood=neighbours, prc_batch_size=PRC_BATCH,
                                     save_cpu_ram=True, verbose=False)
    density, coverage = density_coverage(reference_pool, pool, coverage_neighbours, reference_radii)
    return {"fid": fid, "is": isc[KEY_METRIC_ISC_MEAN], "is_std": isc[KEY_METRIC_ISC_STD],
            "precision": prc[KEY_METRIC_PRECISION], "recall": prc[KEY_METRIC_RECALL], "density": density,
            "coverage": coverage}
