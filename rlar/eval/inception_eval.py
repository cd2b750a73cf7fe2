"""``eval/inception_*`` during training: FID, IS, precision and recall of class-balanced free-running samples
against reference images (``eval.inception``)."""

from __future__ import annotations

import numpy as np
import torch
from omegaconf import DictConfig

from rlar.contracts import Policy, Tokenizer
from rlar.data.batches import ImageData
from rlar.eval.generate import class_balanced_labels, generate_uint8
from rlar.eval.image_arrays import read_fit, read_images, split_uint8
from rlar.eval.inception import POOL_WIDTH, InceptionFeatures, default_weights_path
from rlar.eval.inception_metrics import check_reference_size, inception_metrics
from rlar.eval.model.frechet import gaussian_fit
from rlar.eval.model.manifold import real_balls
from rlar.runtime import distributed

INCEPTION_METRICS = ("fid", "is", "precision", "recall", "density", "coverage")  # as eval/inception_<name>


class InceptionEval:
    """``num_samples`` samples, labels ``0..num_classes-1`` in turn, scored against ``reference`` uint8
    ``[M, H, W, 3]`` (its features computed once, here; FID against ``reference_fit``, an ADM reference batch's
    ``mu`` and ``sigma``, where given, else the fit of those features). Under torchrun each rank samples its share."""

    def __init__(self, features: InceptionFeatures, reference: np.ndarray, num_samples: int, num_classes: int,
                 reference_fit: tuple[torch.Tensor, torch.Tensor] | None = None):
        self.features, self.num_samples, self.num_classes = features, num_samples, num_classes
        self.reference_pool = features(reference)[0]  # [M, 2048]
        self.reference_fit = reference_fit or gaussian_fit(self.reference_pool)  # mean [2048], covariance [2048, 2048]
        self.reference_radii = real_balls(self.reference_pool)  # [M] or None: density's and coverage's balls

    def __call__(self, policy: Policy, tokenizer: Tokenizer, sampling: dict, batch_size: int, seed: int, device,
                 autocast=None) -> dict[str, float]:
        """``eval/inception_<metric>`` of ``INCEPTION_METRICS``."""
        labels = class_balanced_labels(self.num_samples, self.num_classes)  # [N]
        per_rank = -(-self.num_samples // distributed.world_size())
        rows = torch.arange(per_rank) + distributed.rank() * per_rank  # this rank's rows, padded past N
        generator = torch.Generator().manual_seed(seed + distributed.rank())
        images = generate_uint8(policy, tokenizer, labels[rows % self.num_samples], sampling, batch_size,
                                generator, device, autocast)  # [per_rank, H, W, 3]
        pool, logits = self.features(images)  # [per_rank, 2048], [per_rank, 1008]
        real = distributed.gather_rows((rows < self.num_samples).to(device, torch.uint8)).bool().cpu()
        pool = distributed.gather_rows(pool.to(device)).cpu()[real]
        logits = distributed.gather_rows(logits.to(device)).cpu()[real]
        metrics = inception_metrics(pool, logits, self.reference_pool, self.reference_fit,
                                    reference_radii=self.reference_radii)
        return {f"eval/inception_{name}": metrics[name] for name in INCEPTION_METRICS}


def build_inception_eval(data: ImageData, inception_cfg: DictConfig, cache_dir: str | None, batch_size: int,
                         device) -> InceptionEval:
    """The ``eval.inception`` evaluation: the weights file (default under the cache dir), the reference images (an
    ``.npz``, whose ``mu`` and ``sigma`` FID uses where it has them, or a folder; default: the held-out split), read
    and checked (at least 2 images, a fit of the pool features) before the network is loaded."""
    reference = inception_cfg.reference
    fit = read_fit(reference, POOL_WIDTH) if reference else None
    images = read_images(reference) if reference else split_uint8(data, "eval")  # [M, H, W, 3]
    check_reference_size(len(images), f"eval.inception.reference={reference}" if reference else "the held-out split")
    features = InceptionFeatures(inception_cfg.weights or default_weights_path(cache_dir), device, batch_size)
    return InceptionEval(features, images, inception_cfg.num_samples, data.num_classes, fit)
