"""A stand-in reward for evaluation tests: it records what each call is given and scores 0."""

import torch

from rlar.contracts import Reward


class CallsSeen(Reward):
    """Records each call's ``images`` and ``targets``; scores 0, with no components."""

    def __init__(self):
        self.images, self.targets = [], []

    def __call__(self, images, targets=None, meta=None):
        self.images.append(images)
        self.targets.append(targets)
        return torch.zeros(len(images)), {}
