"""A distribution-level reward for diversity on the data's manifold: each sample's share of the train digits it
covers, in the feature space of the reward's own classifier (never the judge's)."""

from __future__ import annotations

import torch
from omegaconf import DictConfig

from rlar.contracts import Reward
from rlar.data.batches import ImageData
from rlar.eval.model.manifold import knn_radii
from rlar.reward.classifier import LazyClassifier, classifier_features, data_groups, request_groups


def coverage_shares(samples: torch.Tensor, bank: torch.Tensor, real: torch.Tensor, radii: torch.Tensor
                    ) -> torch.Tensor:
    """``[N]``: the Shapley value of each of ``samples [N, F]`` in the coverage of the real points ``real [M, F]``.

    A real point is covered by a sample inside its ball (``radii [M]``, boundary included); each covered point's
    credit 1 / M is split evenly among the samples and ``bank [B, F]`` points that cover it. So the shares of the
    samples and the bank sum to the fraction of real points covered; a sample off the manifold scores 0, and one in
    a region the others already cover scores less than one that covers what nobody else does.
    """
    covers = torch.cdist(torch.cat([samples, bank]), real) <= radii[None]  # [N + B, M]
    per_point = covers.sum(0).clamp_min(1)  # [M]: how many cover each real point
    return (covers[: len(samples)].double() / per_point).sum(1) / len(real)


class CoverageReward(Reward):
    """``reward(images, targets, meta) -> (r [N], {"coverage": r})``: :func:`coverage_shares` of the batch's
    features, next to a bank of the last ``bank_size`` samples' features, over the train split's features, each with
    the ball reaching its ``k``-th nearest train neighbour (the real manifold of improved precision; the per-sample
    form of the density-and-coverage "coverage"). It rewards samples that land on the data where the policy's recent
    samples do not: diversity that stays on the manifold.

    ``class_conditional``: per requested class (``meta["labels"]``) against that class's data with its own bank (a
    null-class request, label < 0, against all the data). The bank moves while ``learning`` is True (evaluation
    scores without moving it) and is the reward's ``state_dict()``. ``targets`` are ignored.
    """

    def __init__(self, data: ImageData, classifier: dict | DictConfig | None, cache_dir: str | None = None,
                 k: int = 3, bank_size: int = 128, class_conditional: bool = True, chunk_size: int = 256):
        if k < 1:
            raise ValueError(f"reward.k must be >= 1 (the real balls reach the k-th nearest train digit), got {k}")
        if bank_size < 0:
            raise ValueError(f"reward.bank_size must be >= 0 (recent samples kept per class; 0 = the batch alone), "
                             f"got {bank_size}")
        self.data, self.classifier = data, LazyClassifier(data, classifier, cache_dir)
        self.k, self.bank_size, self.class_conditional, self.chunk_size = k, bank_size, class_conditional, chunk_size
        self.reference: dict[int, tuple[torch.Tensor, torch.Tensor]] | None = None  # group -> (features, radii)
        self.bank: dict[int, torch.Tensor] = {}  # group -> the last bank_size samples' features [B, F]

    def state_dict(self) -> dict:
        return {"bank": {str(g): b for g, b in self.bank.items()}}

    def load_state_dict(self, state: dict) -> None:
        self.bank = {int(g): b for g, b in state.get("bank", {}).items()}

    def features(self, images: torch.Tensor) -> torch.Tensor:
        """``[N, F]`` float64 on the CPU: the reward classifier's penultimate features."""
        return classifier_features(self.classifier, images, self.chunk_size).double()

    def data_manifold(self, device) -> dict[int, tuple[torch.Tensor, torch.Tensor]]:
        """The train split's features and k-NN radii, over all of it (-1) and, if class-conditional, per class."""
        if self.reference is None:
            features = self.features(self.data.train_images.to(device))  # [M, F]
            groups = data_groups(features, self.data.train_labels, self.class_conditional)
            too_small = {g: len(f) for g, f in groups.items() if len(f) <= self.k}
            if too_small:
                raise ValueError(f"reward=coverage: reward.k={self.k} needs more than k train images per group, "
                                 f"got {too_small}; lower reward.k")
            self.reference = {g: (f, knn_radii(f, self.k)) for g, f in groups.items()}
        return self.reference

    @torch.no_grad()
    def __call__(self, images: torch.Tensor, targets: torch.Tensor | None = None, meta: dict | None = None):
        groups = request_groups(len(images), meta, self.class_conditional, "coverage")  # [N]
        manifold, features = self.data_manifold(images.device), self.features(images)  # [N, F]
        reward = torch.empty(len(images), dtype=torch.float64)
        for g in groups.unique().tolist():
            rows = groups == g
            bank = self.bank.get(g, features.new_zeros(0, features.shape[1]))  # [B, F]
            reward[rows] = coverage_shares(features[rows], bank, *manifold[g])
            if self.learning and self.bank_size:  # the newest samples join the bank, the oldest leave it
                self.bank[g] = torch.cat([bank, features[rows]])[-self.bank_size:]
        reward = reward.float().to(images.device)
        return reward, {"coverage": reward}
