"""A train split held in memory: the data a reward reads its reference from, in tests that build it by hand."""

import torch

from rlar.data.batches import ImageData


class TrainSplit(ImageData):
    def __init__(self, images: torch.Tensor, labels: torch.Tensor):
        self.train_images, self.train_labels = images, labels  # [M, C, H, W], [M]
