"""The judge's metrics of generated samples: ``eval/class_acc``, ``eval/fd``, ``eval/precision``, ``eval/recall``,
``eval/density``, ``eval/coverage``, ``eval/diversity`` and ``eval/memorization``, in the evaluation classifier's
feature space."""

from __future__ import annotations

import statistics
from collections.abc import Iterable

import torch
from omegaconf import DictConfig

from rlar.data.batches import ImageData, random_rows
from rlar.data.on_access import chunks
from rlar.eval.model.build import build_eval_classifier
from rlar.eval.model.classifier import DigitsClassifier
from rlar.eval.model.frechet import frechet_distance, gaussian_fit
from rlar.eval.model.manifold import density_coverage, precision_recall, real_balls, relative_diversity
from rlar.eval.model.memorization import TRAIN_IMAGES, TRAIN_SEED, copy_threshold, memorization

CHUNK_SIZE = 256  # images per forward pass (and converted to floats at a time) for the reference features


class EvalModel:
    """The classifier on ``device``, its features of ``real_images [M, C, H, W]`` (the held-out images the
    evaluation conditions on, of classes ``real_labels [M]``; or their batches, in order), their Gaussian fit and
    their density / coverage balls, computed once; with ``train_features [T, F]`` (the classifier's features of the
    train split, or of a subset of it: :func:`train_features`), also how near held-out images come to them, for
    ``eval/memorization``. ``classifier_accuracy``: its held-out accuracy. With ``real_images=None`` (a rank that
    computes no metrics: :func:`build_eval_model`), the classifier alone: :meth:`describe` and :meth:`classify`."""

    def __init__(self, classifier: DigitsClassifier, real_images: torch.Tensor | Iterable[torch.Tensor] | None,
                 real_labels: torch.Tensor | None, device, train_features: torch.Tensor | None = None,
                 chunk_size: int = CHUNK_SIZE):
        self.classifier, self.device = classifier.to(device), device
        self.classifier_accuracy = classifier.metrics["eval_accuracy"]
        self.has_reference = real_images is not None
        if not self.has_reference:
            return
        batches = real_images.split(chunk_size) if torch.is_tensor(real_images) else real_images
        self.real_features = features_of(self.classifier, batches, device)  # [M, F]
        self.real_labels = real_labels.cpu()
        self.real_mean, self.real_cov = gaussian_fit(self.real_features)
        self.real_radii = real_balls(self.real_features)  # [M] or None
        self.train_features = train_features
        self.copy_threshold = None if train_features is None else copy_threshold(self.real_features, train_features)

    @torch.no_grad()
    def describe(self, images: torch.Tensor, labels: torch.Tensor | None = None
                 ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """``(features [N, F], hits [N] bool or None)`` of ``images``: hit = argmax class == ``labels``."""
        images = images.to(self.device)
        features = self.classifier.features(images)  # [N, F]
        hits = None if labels is None else self.classify(features) == labels.to(self.device)
        return features, hits

    @torch.no_grad()
    def classify(self, features: torch.Tensor) -> torch.Tensor:
        """The class ``[N]`` the classifier sees in images of ``features [N, F]`` (from :meth:`describe`)."""
        return self.classifier.head(features.to(self.device)).argmax(1)

    def metrics(self, features: torch.Tensor, hits: torch.Tensor, labels: torch.Tensor,
                per_item: int = 1) -> dict[str, float]:
        """Of samples with ``features [N, F]`` asked for classes ``labels [N]``, ``per_item`` adjacent draws per
        item: ``eval/class_acc`` (the fraction of ``hits [N]``), ``eval/fd`` (against the real images'; NaN below 2
        samples), ``eval/precision`` and ``eval/recall`` (improved, k = 3; NaN below 4), ``eval/density`` and
        ``eval/coverage`` (k = 5, the real images' balls alone; the mean over the ``per_item`` sets of one draw per
        item, since coverage grows with the samples per real image), ``eval/diversity`` (within-class spread
        relative to the real images') and ``eval/memorization`` (the share of samples nearer a train image of
        ``train_features`` than 95 % of the real images are: about 0.05 unless samples copy train images; NaN
        without the train split).
        All but class_acc, density and memorization depend on N: compare values over the same number of
        samples."""
        if not self.has_reference:
            raise RuntimeError("this judge was built without the held-out images (build_eval_model(reference=False): "
                               "a rank that computes no metrics); build it with them to compute metrics")
        if len(features) % per_item:
            raise ValueError(f"{len(features)} samples are not {per_item} draws per item")
        features = features.cpu()
        fd = (frechet_distance(*gaussian_fit(features), self.real_mean, self.real_cov) if len(features) >= 2
              else float("nan"))
        precision, recall = precision_recall(self.real_features, features)
        draws = features.view(-1, per_item, features.shape[1]).unbind(1)  # per_item x [N / per_item, F]
        read = [density_coverage(self.real_features, d, real_radii=self.real_radii) for d in draws]
        density, coverage = (statistics.fmean(v) for v in zip(*read, strict=True))
        return {"eval/class_acc": float(hits.float().mean()), "eval/fd": fd, "eval/precision": precision,
                "eval/recall": recall, "eval/density": density, "eval/coverage": coverage,
                "eval/diversity": relative_diversity(self.real_features, self.real_labels, features, labels.cpu()),
                "eval/memorization": (float("nan") if self.train_features is None
                                      else memorization(features, self.train_features, self.copy_threshold))}


def build_eval_model(data: ImageData, eval_cfg: DictConfig, cache_dir: str | None, device,
                     train_images: int | None = TRAIN_IMAGES, reference: bool = True) -> EvalModel:
    """The classifier of ``eval.classifier_model`` (cached) with the statistics of the held-out images that the
    evaluation uses (the first ``eval.max_items``) and of ``train_images`` train images for ``eval/memorization``
    (all of a smaller split, else a fixed random subset; None: all), each read a chunk at a time. Without
    ``reference`` (a rank other than 0: rank 0 computes the metrics and sends them), the classifier alone: no image is
    read."""
    classifier = build_eval_classifier(data, cache_dir, eval_cfg.classifier_model)
    if not reference:
        return EvalModel(classifier, None, None, device)
    labels = data.eval_labels[: eval_cfg.max_items or None]  # [M]
    real = (data.eval_images_of(idx) for idx in chunks(len(labels), CHUNK_SIZE))  # [<=256, C, H, W] each
    train = train_features(classifier, data, device, limit=train_images)  # [T, F]
    return EvalModel(classifier, real, labels, device, train)


@torch.no_grad()
def features_of(classifier: DigitsClassifier, batches: Iterable[torch.Tensor], device) -> torch.Tensor:
    """``[N, F]`` on the CPU: the features of the images of ``batches`` (each ``[B, C, H, W]``), in order."""
    classifier.to(device)
    return torch.cat([classifier.features(x.to(device)).cpu() for x in batches])


def train_features(classifier: DigitsClassifier, data: ImageData, device, size: int = CHUNK_SIZE,
                   limit: int | None = None) -> torch.Tensor:
    """``[T, F]``: the features of the train split, or of ``limit`` of its images (a fixed random subset, in
    order: ``TRAIN_SEED``), ``size`` images at a time (decoded on access for data on disk), for
    :class:`EvalModel`'s ``eval/memorization``."""
    rows = random_rows(len(data.train_labels), limit, TRAIN_SEED)  # [T]
    return features_of(classifier, data.train_batches(list(rows.split(size))), device)
