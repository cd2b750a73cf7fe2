"""The embedded evaluation model: a small CNN classifier of the data's classes, trained once and cached.

It gives ``eval/class_acc`` and ``eval/fd`` (a Fréchet distance in its feature space) for every evaluation, and
the ``class_consistency`` and ``perceptual_digits`` rewards.
"""

from rlar.eval.model.build import build_eval_classifier
from rlar.eval.model.classifier import DigitsClassifier
from rlar.eval.model.frechet import frechet_distance, gaussian_fit
from rlar.eval.model.scorer import EvalModel, build_eval_model

__all__ = ["DigitsClassifier", "EvalModel", "build_eval_classifier", "build_eval_model", "frechet_distance",
           "gaussian_fit"]
