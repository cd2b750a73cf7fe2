"""A train split held in memory: the data a reward reads its reference from, in tests that build it by hand; and a
reward classifier whose model is a stand-in."""

import torch
from torch import nn

from rlar.data.batches import ImageData
from rlar.reward.classifier import LazyClassifier


class TrainSplit(ImageData):
    def __init__(self, images: torch.Tensor, labels: torch.Tensor):
        self.train_images, self.train_labels = images, labels  # [M, C, H, W], [M]


def stand_in_classifier(data: ImageData, model: nn.Module) -> LazyClassifier:
    """The reward classifier of ``data`` with ``model`` (its ``features``) in place of the cached classifier."""
    classifier = LazyClassifier(data, None, None)
    classifier.model = model
    return classifier
