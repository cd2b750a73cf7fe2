"""A distribution-level reward: each sample's leave-one-out contribution to the Fréchet distance between the
rollout's features and the data's, in the feature space of the reward's own classifier (never the judge's)."""

from __future__ import annotations

import torch
from omegaconf import DictConfig

from rlar.contracts import Reward
from rlar.data.batches import ImageData
from rlar.eval.model.frechet import frechet_distance, gaussian_fit
from rlar.reward.classifier import (
    batch_rows,
    classifier_features,
    data_groups,
    request_groups,
    reward_classifier,
    train_split_labels,
)

Moments = tuple[torch.Tensor, torch.Tensor]  # mean [F], covariance [F, F], float64


def mix(moments: Moments, history: Moments | None, ema: float) -> Moments:
    """``(1 - ema) * moments + ema * history`` (mean and covariance alike); ``moments`` when there is no history."""
    if history is None:
        return moments
    return tuple((1 - ema) * m + ema * h for m, h in zip(moments, history, strict=True))


MIN_SAMPLES = 3  # a set that leaves one sample out keeps a covariance


def leave_one_out_fd(features: torch.Tensor, reference: Moments, history: Moments | None = None,
                     ema: float = 0.0) -> torch.Tensor:
    """``[N]``: ``r_i = FD(without i) - FD(all)`` of ``features [N, F]`` against the ``reference`` moments, each set's
    moments (its ``gaussian_fit``) mixed with ``history`` by :func:`mix`. Positive: sample i brings the set closer
    to the reference. NaN for all below 3 samples (leaving one out must leave a covariance)."""
    n = len(features)
    if n < MIN_SAMPLES:
        return torch.full((n,), float("nan"), dtype=torch.float64)
    total = frechet_distance(*mix(gaussian_fit(features), history, ema), *reference)
    keep = ~torch.eye(n, dtype=torch.bool)  # [N, N]: row i leaves sample i out
    without = [frechet_distance(*mix(gaussian_fit(features[keep[i]]), history, ema), *reference) for i in range(n)]
    return torch.tensor(without, dtype=torch.float64) - total


class LeaveOneOutFDReward(Reward):
    """``reward(images, targets, meta) -> (r [N], {"loo_fd": r})``: :func:`leave_one_out_fd` of the batch's features
    against the data's (the train split's, or the judge's fixed subset of ``TRAIN_IMAGES`` of a larger one, through
    the reward's classifier, ``RewardClassifierSchema``: another seed than the judge's), with exponential moving
    averages of the batch moments across calls (decay ``ema``) mixed in, so that a small batch is measured against
    the distribution the policy has been producing.

    ``class_conditional``: per requested class (``meta["labels"]``), the class's samples against that class's data
    (a null-class request, label < 0, against all the data), each class with its own moving average. A group of
    fewer than 3 samples is NaN (left out of the update) and leaves its average where it was: use
    ``algorithm.num_generations >= 3``. ``targets`` are ignored. Every call moves the averages of the groups it
    scored while ``learning`` is True (evaluation scores without moving them); they are the reward's
    ``state_dict()``, saved with each checkpoint.
    """

    min_group_samples = MIN_SAMPLES  # per group scored together (checked against the config before any work)
    scores_together = True  # the moments of the call's samples

    def __init__(self, data: ImageData, classifier: dict | DictConfig | None, cache_dir: str | None = None,
                 ema: float = 0.9, class_conditional: bool = False, chunk_size: int = 256):
        if not 0.0 <= ema < 1.0:
            raise ValueError(f"reward.ema must be in [0, 1) (0 = the batch alone), got {ema}")
        self.data, self.classifier = data, reward_classifier(data, classifier, cache_dir)
        self.ema, self.class_conditional, self.chunk_size = ema, class_conditional, chunk_size
        self.reference: dict[int, Moments] | None = None  # group -> the data's moments; -1 = all the data
        self.history: dict[int, Moments] = {}  # group -> moving average of the rollouts' moments

    def state_dict(self) -> dict:
        return {"history": {str(g): list(m) for g, m in self.history.items()}}

    def load_state_dict(self, state: dict) -> None:
        self.history = {int(g): tuple(m) for g, m in state.get("history", {}).items()}

    def features(self, images: torch.Tensor) -> torch.Tensor:
        """``[N, F]`` float64 on the CPU: the reward classifier's penultimate features."""
        return classifier_features(self.classifier, images, self.chunk_size).double()

    def data_moments(self, device) -> dict[int, Moments]:
        """The train images' moments, over all of them (-1) and, if class-conditional, per class; computed once."""
        if self.reference is None:
            features = self.classifier.train_features(device, self.chunk_size).double()  # [T, F]
            groups = data_groups(features, train_split_labels(self.data), self.class_conditional)
            self.reference = {g: gaussian_fit(f) for g, f in groups.items()}
        return self.reference

    @torch.no_grad()
    def __call__(self, images: torch.Tensor, targets: torch.Tensor | None = None, meta: dict | None = None):
        groups = request_groups(len(images), meta, self.class_conditional, "loo_fd")  # [N]
        reference, features = self.data_moments(images.device), self.features(images)  # [N, F]
        features, groups, mine = batch_rows(features, groups, self.learning, images.device)  # training: [world*N]
        reward = torch.full((len(features),), float("nan"), dtype=torch.float64)
        finite = features.isfinite().all(1)  # [N]: a non-finite image is left unscored (NaN) and out of the moments
        for g in groups[finite].unique().tolist():
            rows = (groups == g) & finite
            reward[rows] = leave_one_out_fd(features[rows], reference[g], self.history.get(g), self.ema)
            if self.learning and rows.sum() >= MIN_SAMPLES:  # the average moves to the moments of a group scored
                self.history[g] = mix(gaussian_fit(features[rows]), self.history.get(g), self.ema)
        reward = reward[mine].float().to(images.device)
        return reward, {"loo_fd": reward}
