"""Rewards from a digits classifier of the judge's architecture (``rlar/eval/model``) but not the judge: class
consistency, and a perceptual distance in its feature space, the offline stand-in for LPIPS on the digits.

These take the data (``${data}``: every component of a run is handed the run's own, rlar.reward.build), the
classifier's settings (``reward.classifier``, typed by ``RewardClassifierSchema``: another seed than
``eval.classifier_model``) and ``${cache_dir}``, and build the classifier on their first call (trained once, then
cached).
"""

from __future__ import annotations

import contextlib
import json
import os
from collections.abc import Iterable, Iterator
from weakref import WeakKeyDictionary

import torch
import torch.nn.functional as F
from omegaconf import DictConfig

from rlar.config.schemas import RewardClassifierSchema
from rlar.contracts import Reward
from rlar.data.batches import ImageData, random_rows
from rlar.eval.model.build import build_eval_classifier, classifier_spec
from rlar.eval.model.classifier import DigitsClassifier
from rlar.eval.model.memorization import TRAIN_IMAGES, TRAIN_SEED
from rlar.eval.model.scorer import train_features
from rlar.runtime import distributed


class LazyClassifier:
    """``get(device)``: the reward's classifier of ``data`` (``settings`` over ``RewardClassifierSchema``'s
    defaults; None = those defaults), built (or read from the cache) on first use, trained on the train images its
    batches draw (data on disk decoded on access, never the whole split at once). ``train_features``: its features
    of the reference train images, computed once. The components of a mix share one: :func:`reward_classifier`."""

    def __init__(self, data: ImageData, settings: dict | DictConfig | None, cache_dir: str | None):
        self.data, self.settings, self.cache_dir = data, settings, cache_dir
        self.model: DigitsClassifier | None = None
        self.reference: dict[int, torch.Tensor] = {}  # chunk size -> train features [T, F]

    def build(self) -> DigitsClassifier:
        """The classifier, read from the cache, or trained and cached (in its own seeded stream) the first time."""
        if self.model is None:
            with torch.enable_grad():  # first use may train it, from inside a reward call under no_grad
                self.model = build_eval_classifier(self.data, self.cache_dir, self.settings, RewardClassifierSchema)
        return self.model

    def get(self, device) -> DigitsClassifier:
        self.model = self.build().to(device)
        return self.model

    def train_features(self, device, chunk_size: int) -> torch.Tensor:
        """``[T, F]`` on the CPU: the features of ``data``'s reference train images (those of
        :func:`train_split_labels`: at most ``TRAIN_IMAGES``, the judge's rule), ``chunk_size`` images per forward
        pass on ``device`` (data on disk is decoded a chunk at a time, never held whole). Read-only."""
        if chunk_size not in self.reference:
            self.reference[chunk_size] = train_features(self.get(device), self.data, device, chunk_size,
                                                        limit=TRAIN_IMAGES)
        return self.reference[chunk_size]


# data -> {its settings and cache: its classifier}
_SHARED: WeakKeyDictionary[ImageData, dict[str, LazyClassifier]] = WeakKeyDictionary()
_ASKED: list[list[LazyClassifier]] = []  # one list per open asked_classifiers block


def reward_classifier(data: ImageData, settings: dict | DictConfig | None,
                      cache_dir: str | os.PathLike | None) -> LazyClassifier:
    """The reward classifier of ``data``, ``settings`` and ``cache_dir``: one for all the rewards that ask for it,
    so the components of a mix load it, measure its held-out accuracy and read the reference train images once."""
    key = json.dumps([classifier_spec(settings, RewardClassifierSchema), cache_dir and str(cache_dir)], sort_keys=True)
    shared = _SHARED.setdefault(data, {})
    if key not in shared:
        shared[key] = LazyClassifier(data, settings, cache_dir)
    for asked in _ASKED:
        asked.append(shared[key])
    return shared[key]


@contextlib.contextmanager
def asked_classifiers() -> Iterator[list[LazyClassifier]]:
    """The reward classifiers the rewards built inside the block ask for (:func:`reward_classifier`), on whatever
    data: the run's, or a reward's own."""
    asked: list[LazyClassifier] = []
    _ASKED.append(asked)
    try:
        yield asked
    finally:
        _ASKED.pop()  # blocks nest: this one is the last opened


def build_classifiers(classifiers: Iterable[LazyClassifier]) -> list[str]:
    """Build (or read from the cache) ``classifiers`` (:func:`asked_classifiers`) before the rewards' first call
    would: ``rlar-prepare`` caches them, and under torchrun rank 0 trains them while the others wait
    (``distributed.main_process_first``). Their sources, each classifier's once."""
    return [classifier.build().source for classifier in {id(c): c for c in classifiers}.values()]


def classifier_features(classifier: LazyClassifier, images: torch.Tensor, chunk_size: int) -> torch.Tensor:
    """``[N, F]`` on the CPU: the reward classifier's penultimate features of ``images [N, C, H, W]``, ``chunk_size``
    images per forward pass."""
    model = classifier.get(images.device)
    return torch.cat([model.features(x) for x in images.split(chunk_size)]).cpu()


def train_split_labels(data: ImageData) -> torch.Tensor:
    """``[T]``: the labels of the train images :func:`train_split_features` reads, in its order: the whole split
    when it has at most ``TRAIN_IMAGES`` images (all 1,438 digits), else the judge's fixed random subset of that
    many (``TRAIN_SEED``), so that a reward's cost does not grow with the split."""
    return data.train_labels[random_rows(len(data.train_labels), TRAIN_IMAGES, TRAIN_SEED)]


def batch_rows(features: torch.Tensor, groups: torch.Tensor, learning: bool, device
               ) -> tuple[torch.Tensor, torch.Tensor, slice]:
    """What a reward that scores samples against their batch (``loo_fd``, ``coverage``) scores: while it learns (in
    training, where every process scores as many rows), every process's ``features [N, F]`` and ``groups [N]``
    gathered, and this process's rows among them, so that its scores and the state it keeps are one process's;
    else (an evaluation, one process) its own rows."""
    if not learning or not distributed.is_distributed():
        return features, groups, slice(None)
    gathered = [distributed.gather_rows(x.to(device)).cpu() for x in (features, groups)]  # [world * N, ...]
    start = distributed.rank() * len(features)
    return gathered[0], gathered[1], slice(start, start + len(features))


def request_groups(count: int, meta: dict | None, class_conditional: bool, reward: str) -> torch.Tensor:
    """``[count]``: the group each image is scored in, its requested class (``meta["labels"]``, a null-class request
    -1) when ``class_conditional``, else -1 for all (all the data)."""
    if not class_conditional:
        return torch.full((count,), -1)
    labels = (meta or {}).get("labels")
    if labels is None or len(labels) != count:
        raise ValueError(f"reward={reward} with class_conditional=true needs meta['labels'] with one label per "
                         f"image ({count}), got {None if labels is None else len(labels)}")
    return torch.as_tensor(labels).long().cpu().clamp_min(-1)


def data_groups(features: torch.Tensor, labels: torch.Tensor, class_conditional: bool) -> dict[int, torch.Tensor]:
    """The train images' ``features [T, F]`` in the groups :func:`request_groups` scores against: all of them (-1)
    and, when ``class_conditional``, each class's (``labels [T]``)."""
    groups = {-1: features}
    if class_conditional:
        labels = labels.cpu()
        groups |= {c: features[labels == c] for c in labels.unique().tolist()}
    return groups


class ClassConsistencyReward(Reward):
    """``reward(images, targets, meta) -> (r [N], {"class_prob": p [N]})``: ``p`` the classifier's softmax
    probability of the requested class ``meta["labels"] [N]``, in [0, 1]; a negative (null-class) label scores the
    largest class probability, i.e. that the sample shows some class; ``r`` is ``p``. ``targets`` are ignored.

    The probability rather than its log: bounded, so one unrecognisable sample cannot dominate a batch's statistics.
    ``threshold``: the reward is 1 where that probability is at least ``threshold``, else 0 (accept or reject), so
    that among accepted samples a prototypical one scores no more than an unusual one; under a KL to the prior
    (``algorithm.beta``) the policy that maximises it is the prior reweighted toward its accepted samples.
    """

    def __init__(self, data: ImageData, classifier: dict | DictConfig | None, cache_dir: str | None = None,
                 threshold: float | None = None):
        if threshold is not None and not 0 < threshold <= 1:
            raise ValueError(f"reward.threshold must be in (0, 1] (a class probability), got {threshold}; "
                             f"e.g. reward.threshold=0.9, or null for the probability itself")
        self.classifier = reward_classifier(data, classifier, cache_dir)
        self.threshold = threshold

    @torch.no_grad()
    def __call__(self, images: torch.Tensor, targets: torch.Tensor | None = None, meta: dict | None = None):
        labels = (meta or {}).get("labels")
        if labels is None or len(labels) != len(images):
            raise ValueError(f"reward=class_consistency needs the requested classes as meta['labels'] with one label "
                             f"per image ({len(images)}), got {None if labels is None else len(labels)}")
        probs = self.classifier.get(images.device)(images).softmax(1)  # [N, K]
        labels = torch.as_tensor(labels, device=images.device).long()  # [N]
        asked = probs.gather(1, labels.clamp_min(0)[:, None])[:, 0]
        prob = torch.where(labels >= 0, asked, probs.amax(1))  # [N]
        if self.threshold is None:
            return prob, {"class_prob": prob}
        reward = torch.where(prob.isnan(), prob, (prob >= self.threshold).float())  # a NaN image stays unscored
        return reward, {"class_prob": prob}


def perceptual_distance(model: DigitsClassifier, images: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """LPIPS-style distance in the classifier's feature space, per item: ``[N]``.

    Each conv block's activations are unit-normalized over channels at every position; the squared difference is
    averaged over positions, then over blocks (uniform weights: there are no calibrated ones). In [0, 2], since the
    activations are non-negative; 0 for identical images.
    """
    n = len(images)
    both = model.block_outputs(torch.cat([images, targets]))  # per block [2N, w, S, S]
    terms = [(F.normalize(x[:n], dim=1) - F.normalize(x[n:], dim=1)).square().sum(1).flatten(1).mean(1)
             for x in both]
    return torch.stack(terms).mean(0)


class PerceptualDigitsReward(Reward):
    """``reward(images, targets, meta) -> (-d [N], {"neg_perceptual_digits": [N]})``, ``d`` the
    :func:`perceptual_distance` of each sample to its target under the reward's own digits classifier (not the
    judge): the stand-in for ``reward=lpips`` where LPIPS's pretrained backbone cannot be loaded offline."""

    reads_targets = True

    def __init__(self, data: ImageData, classifier: dict | DictConfig | None, cache_dir: str | None = None):
        self.classifier = reward_classifier(data, classifier, cache_dir)

    @torch.no_grad()
    def __call__(self, images: torch.Tensor, targets: torch.Tensor, meta: dict | None = None):
        reward = -perceptual_distance(self.classifier.get(images.device), images, targets.to(images.device))
        return reward, {"neg_perceptual_digits": reward}
