"""``eval/class_acc`` and ``eval/fd`` of generated samples, from the evaluation classifier."""

from __future__ import annotations

import torch
from omegaconf import DictConfig

from rlar.data.batches import ImageData
from rlar.eval.model.build import build_eval_classifier
from rlar.eval.model.classifier import DigitsClassifier
from rlar.eval.model.frechet import frechet_distance, gaussian_fit


class EvalModel:
    """The classifier on ``device`` and the Gaussian fit of its features of ``real_images [M, C, H, W]`` (the
    held-out images the evaluation conditions on), fitted once. ``classifier_accuracy``: its held-out accuracy."""

    def __init__(self, classifier: DigitsClassifier, real_images: torch.Tensor, device, chunk_size: int = 256):
        self.classifier, self.device = classifier.to(device), device
        self.classifier_accuracy = classifier.metrics["eval_accuracy"]
        features = torch.cat([self.describe(x)[0] for x in real_images.split(chunk_size)])  # [M, F]
        self.real_mean, self.real_cov = gaussian_fit(features)

    @torch.no_grad()
    def describe(self, images: torch.Tensor, labels: torch.Tensor | None = None
                 ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """``(features [N, F], hits [N] bool or None)`` of ``images``: hit = argmax class == ``labels``."""
        images = images.to(self.device)
        features = self.classifier.features(images)  # [N, F]
        hits = None if labels is None else self.classifier.head(features).argmax(1) == labels.to(self.device)
        return features, hits

    def metrics(self, features: torch.Tensor, hits: torch.Tensor) -> dict[str, float]:
        """``eval/class_acc`` (the fraction of hits) and ``eval/fd`` (the samples' ``features [N, F]`` against the
        real images'; NaN below 2 samples). FD is biased by N: compare values over the same number of samples."""
        if len(features) < 2:
            return {"eval/class_acc": float(hits.float().mean()), "eval/fd": float("nan")}
        return {"eval/class_acc": float(hits.float().mean()),
                "eval/fd": frechet_distance(*gaussian_fit(features), self.real_mean, self.real_cov)}


def build_eval_model(data: ImageData, eval_cfg: DictConfig, cache_dir: str | None, device) -> EvalModel:
    """The classifier of ``eval.classifier_model`` (cached) with the statistics of the held-out images that the
    evaluation uses (the first ``eval.max_items``)."""
    classifier = build_eval_classifier(data, cache_dir, eval_cfg.classifier_model)
    return EvalModel(classifier, data.eval_images[: eval_cfg.max_items or None], device)
