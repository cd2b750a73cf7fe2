"""Distribution-level rewards for diversity on the data's manifold: each sample's share of the train digits it
covers, with the train digits' balls (coverage) or the samples' own (recall), in the feature space of the reward's
own classifier (never the judge's)."""

from __future__ import annotations

import torch
from omegaconf import DictConfig

from rlar.contracts import Reward
from rlar.data.batches import ImageData
from rlar.eval.model.manifold import blocks, knn_radii
from rlar.reward.classifier import (
    batch_rows,
    classifier_features,
    data_groups,
    request_groups,
    reward_classifier,
    train_split_labels,
)


def coverage_shares(samples: torch.Tensor, bank: torch.Tensor, real: torch.Tensor, radii: torch.Tensor
                    ) -> torch.Tensor:
    """``[N]``: the Shapley value of each of ``samples [N, F]`` in the coverage of the real points ``real [M, F]``.

    A real point is covered by a sample inside its ball (``radii [M]``, boundary included); each covered point's
    credit 1 / M is split evenly among the samples and ``bank [B, F]`` points that cover it. So the shares of the
    samples and the bank sum to the fraction of real points covered; a sample off the manifold scores 0, and one in
    a region the others already cover scores less than one that covers what nobody else does.
    """
    return split_credit(inside_balls(torch.cat([samples, bank]), real, radii[None]), len(samples))


def recall_shares(samples: torch.Tensor, bank: torch.Tensor, real: torch.Tensor, k: int) -> torch.Tensor:
    """``[N]``: the Shapley value of each of ``samples [N, F]`` in the recall of the real points ``real [M, F]``, in
    the game whose balls are fixed at their radii among all the generated points.

    As :func:`coverage_shares`, but each ball is a generated point's (of the samples and ``bank [B, F]``), reaching
    its ``k``-th nearest other generated point: the manifold of improved recall. A sample among near-copies of itself
    has a small ball and covers little; one alone near real points the others miss covers most. All 0 while there
    are no more than ``k`` generated points (no ball is defined).
    """
    generated = torch.cat([samples, bank])  # [N + B, F]
    if len(generated) <= k:
        return samples.new_zeros(len(samples))
    return split_credit(inside_balls(generated, real, knn_radii(generated, k)[:, None]), len(samples))


def inside_balls(generated: torch.Tensor, real: torch.Tensor, radii: torch.Tensor) -> torch.Tensor:
    """``[P, M]`` bool: ``cdist(generated [P, F], real [M, F]) <= radii`` (boundary included), ``radii`` ``[1, M]``
    (balls around the real points) or ``[P, 1]`` (around the generated points), the distances computed a block of
    :func:`~rlar.eval.model.manifold.blocks` at a time (never the whole float64 matrix)."""
    inside = torch.empty(len(generated), len(real), dtype=torch.bool)  # [P, M]
    radii = radii.expand(len(generated), len(real))  # [P, M], a view
    for rows, cols in blocks(len(generated), len(real)):
        inside[rows, cols] = torch.cdist(generated[rows], real[cols]) <= radii[rows, cols]
    return inside


def split_credit(covers: torch.Tensor, n: int) -> torch.Tensor:
    """``[n]``: the first ``n`` rows' shares of ``covers [P, M]`` (row p's ball holds real point m): each covered
    point's credit 1 / M split evenly among the rows that cover it."""
    per_point = covers.sum(0).clamp_min(1)  # [M]: how many cover each real point
    return (covers[:n].double() / per_point).sum(1) / covers.shape[1]


class CoverageReward(Reward):
    """``reward(images, targets, meta) -> (r [N], {"coverage": r})``: :func:`coverage_shares` of the batch's
    features, next to a bank of the last ``bank_size`` samples' features, over the train split's features (or the
    judge's fixed subset of ``TRAIN_IMAGES`` of a larger split), each with the ball reaching its ``k``-th nearest
    train neighbour (the real manifold of improved precision; the per-sample form of the density-and-coverage
    "coverage"). It rewards samples that land on the data where the policy's recent samples do not: diversity that
    stays on the manifold.

    ``class_conditional``: per requested class (``meta["labels"]``) against that class's data with its own bank (a
    null-class request, label < 0, against all the data). The bank moves while ``learning`` is True (evaluation
    scores without moving it) and is the reward's ``state_dict()``. A non-finite image (a failed decode) is NaN and
    left out of the bank. ``targets`` are ignored.
    """

    name = "coverage"  # the component's key, and the reward's name in errors
    scores_together = True  # each sample against the call's other samples and the bank
    real_balls = True  # balls around the train digits, reaching the k-th nearest: more than k digits per group

    def __init__(self, data: ImageData, classifier: dict | DictConfig | None, cache_dir: str | None = None,
                 k: int = 3, bank_size: int = 128, class_conditional: bool = True, chunk_size: int = 256):
        if k < 1:
            raise ValueError(f"reward.k must be >= 1 (the real balls reach the k-th nearest train digit), got {k}")
        if bank_size < 0:
            raise ValueError(f"reward.bank_size must be >= 0 (recent samples kept per class; 0 = the batch alone), "
                             f"got {bank_size}")
        self.data, self.classifier = data, reward_classifier(data, classifier, cache_dir)
        self.k, self.bank_size, self.class_conditional, self.chunk_size = k, bank_size, class_conditional, chunk_size
        self.reference: dict[int, tuple[torch.Tensor, torch.Tensor | None]] | None = None  # group -> (features, radii)
        self.bank: dict[int, torch.Tensor] = {}  # group -> the last bank_size samples' features [B, F]

    def state_dict(self) -> dict:
        return {"bank": {str(g): b for g, b in self.bank.items()}}

    def load_state_dict(self, state: dict) -> None:
        self.bank = {int(g): b for g, b in state.get("bank", {}).items()}

    def features(self, images: torch.Tensor) -> torch.Tensor:
        """``[N, F]`` float64 on the CPU: the reward classifier's penultimate features."""
        return classifier_features(self.classifier, images, self.chunk_size).double()

    def data_manifold(self, device) -> dict[int, tuple[torch.Tensor, torch.Tensor | None]]:
        """The train images' features and, for balls around the train digits (``real_balls``), their k-NN radii,
        over all of them (-1) and, if class-conditional, per class."""
        if self.reference is None:
            features = self.classifier.train_features(device, self.chunk_size).double()  # [T, F]
            groups = data_groups(features, train_split_labels(self.data), self.class_conditional)
            too_small = {g: len(f) for g, f in groups.items() if len(f) <= self.k}
            if too_small and self.real_balls:
                raise ValueError(f"reward={self.name}: reward.k={self.k} needs more than k train images per group, "
                                 f"got {too_small}; lower reward.k")
            self.reference = {g: (f, knn_radii(f, self.k) if self.real_balls else None) for g, f in groups.items()}
        return self.reference

    @torch.no_grad()
    def __call__(self, images: torch.Tensor, targets: torch.Tensor | None = None, meta: dict | None = None):
        groups = request_groups(len(images), meta, self.class_conditional, self.name)  # [N]
        manifold, features = self.data_manifold(images.device), self.features(images)  # [N, F]
        features, groups, mine = batch_rows(features, groups, self.learning, images.device)  # training: [world*N]
        reward = torch.full((len(features),), float("nan"), dtype=torch.float64)
        finite = features.isfinite().all(1)  # [N]: a non-finite image is left unscored (NaN) and out of the bank
        for g in groups[finite].unique().tolist():
            rows = (groups == g) & finite
            bank = self.bank.get(g, features.new_zeros(0, features.shape[1]))  # [B, F]
            reward[rows] = self.shares(features[rows], bank, *manifold[g])
            if self.learning and self.bank_size:  # the newest samples join the bank, the oldest leave it
                self.bank[g] = torch.cat([bank, features[rows]])[-self.bank_size:]
        reward = reward[mine].float().to(images.device)
        return reward, {self.name: reward}

    def shares(self, samples: torch.Tensor, bank: torch.Tensor, real: torch.Tensor, radii: torch.Tensor
               ) -> torch.Tensor:
        """``[N]``: each sample's share (:func:`coverage_shares`)."""
        return coverage_shares(samples, bank, real, radii)


class RecallReward(CoverageReward):
    """``reward(images, targets, meta) -> (r [N], {"recall": r})``: as :class:`CoverageReward`, with
    :func:`recall_shares`: each ball is a generated point's (the batch's and the bank's), reaching its ``k``-th
    nearest generated neighbour, so it rewards samples far from the policy's other samples that still reach real
    digits (the per-sample form of improved recall)."""

    name = "recall"
    real_balls = False  # the balls are the generated points': a group may have any number of train digits

    def shares(self, samples: torch.Tensor, bank: torch.Tensor, real: torch.Tensor, radii: None) -> torch.Tensor:
        """``[N]``: each sample's share (:func:`recall_shares`)."""
        return recall_shares(samples, bank, real, self.k)
