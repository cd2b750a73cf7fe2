"""Structured-config schema of the evaluation classifier (``eval.classifier_model``); its defaults are the
builder's."""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass
class ClassifierTrainSchema:
    steps: int = 300
    lr: float = 2e-3
    batch_size: int = 64
    max_shift: int = 2  # random shifts of up to this many pixels along each axis
    seed: int = 0


@dataclass
class EvalClassifierSchema:
    input_size: int = 32  # images are resized to this (a multiple of 8)
    width: int = 16  # channels of the first conv block (then 2x, 4x)
    features: int = 128  # the penultimate features: the space of eval/fd
    train: ClassifierTrainSchema = field(default_factory=ClassifierTrainSchema)
