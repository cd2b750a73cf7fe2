"""A distribution-level reward learned online: the logit of a class-conditional discriminator that tells the data
from the policy's samples, in the feature space of the reward's own classifier (never the judge's).

With ``D`` the probability that features come from the data, its logit estimates ``log p_data(x) / p_policy(x)``;
the policy's expected reward ``E_policy[logit D]`` is then ``-KL(policy || data)``, which is the objective whose
optimum is the data distribution itself (not one mode of it: samples the policy over-produces score low).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from omegaconf import DictConfig
from torch import nn

from rlar.contracts import Reward
from rlar.data.batches import ImageData
from rlar.reward.classifier import classifier_features, request_groups, reward_classifier, train_split_labels
from rlar.runtime import distributed
from rlar.runtime.cache import seeded


class ProjectionDiscriminator(nn.Module):
    """``logit(features [N, F], labels [N]) -> [N]``: an MLP ``h`` of the standardized features, ``w . h + b``, plus
    ``embed(label) . h`` for labels >= 0 (the projection discriminator's class term); null labels (< 0) get none."""

    def __init__(self, num_features: int, num_classes: int, hidden: int):
        super().__init__()
        self.body = nn.Sequential(nn.Linear(num_features, hidden), nn.SiLU(), nn.Linear(hidden, hidden), nn.SiLU())
        self.out = nn.Linear(hidden, 1)
        self.embed = nn.Embedding(num_classes, hidden)
        nn.init.zeros_(self.embed.weight)
        self.register_buffer("mean", torch.zeros(num_features))
        self.register_buffer("std", torch.ones(num_features))

    def forward(self, features: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        h = self.body((features - self.mean) / self.std)  # [N, hidden]
        known = labels >= 0
        proj = (self.embed(labels.clamp_min(0)) * h).sum(1) * known  # [N]
        return self.out(h)[:, 0] + proj


class DiscriminatorReward(Reward):
    """``reward(images, targets, meta) -> (logit [N], {"disc_logit": [N]})``: the discriminator's logit of each
    sample, after ``steps`` Adam steps on this call's samples (added to a buffer of the last ``buffer_size`` samples'
    features) against train images of the same classes (the split's, or the judge's fixed subset of ``TRAIN_IMAGES``
    of a larger one). The first call trains ``warmup_steps`` steps first.

    ``class_conditional``: the discriminator also reads the requested class (``meta["labels"]``), so a sample is
    scored against its own class's data. ``targets`` are not read: the data side is the train split alone. While
    ``learning`` is False (evaluation) it scores without training. ``logit_bound``: the reward is the logit clamped
    to ``[-logit_bound, logit_bound]``, so that a sample the MLP extrapolates to a logit in the thousands weighs no
    more in its batch's z-scores than one at the bound; None (the default): the logit as it is. Under torchrun
    every rank adds the global batch's features (gathered) and draws the same data rows, so the discriminators stay
    identical. Its weights, optimizer, buffer and random stream are its ``state_dict()`` (saved with each checkpoint).
    """

    scores_together = True  # after training on the call's samples

    def __init__(self, data: ImageData, classifier: dict | DictConfig | None, cache_dir: str | None = None,
                 class_conditional: bool = True, hidden: int = 128, lr: float = 1e-3, steps: int = 4,
                 warmup_steps: int = 200, batch_size: int = 256, buffer_size: int = 1024, seed: int = 0,
                 chunk_size: int = 256, logit_bound: float | None = None):
        if logit_bound is not None and not logit_bound > 0:
            raise ValueError(f"reward.logit_bound must be > 0 (or null for the raw logit), got {logit_bound}")
        for name, value in (("hidden", hidden), ("steps", steps), ("batch_size", batch_size),
                            ("buffer_size", buffer_size)):
            if value < 1:
                raise ValueError(f"reward.{name} must be >= 1, got {value}")
        self.data, self.classifier = data, reward_classifier(data, classifier, cache_dir)
        self.class_conditional, self.hidden, self.lr = class_conditional, hidden, lr
        self.steps, self.warmup_steps, self.batch_size, self.buffer_size = steps, warmup_steps, batch_size, buffer_size
        self.seed, self.chunk_size, self.logit_bound = seed, chunk_size, logit_bound
        self.generator = torch.Generator().manual_seed(seed)
        self.model: ProjectionDiscriminator | None = None
        self.optimizer: torch.optim.Optimizer | None = None
        self.real: tuple[torch.Tensor, torch.Tensor] | None = None  # train images: features [T, F], labels [T]
        self.fake: tuple[torch.Tensor, torch.Tensor] | None = None  # the buffer: features [<=S, F], labels [<=S]
        self.restored: dict | None = None  # a checkpoint's state, applied once the discriminator is built

    def features(self, images: torch.Tensor) -> torch.Tensor:
        """``[N, F]`` float32 on the CPU: the reward classifier's penultimate features."""
        return classifier_features(self.classifier, images, self.chunk_size).float()

    def build(self, device) -> None:
        """The train images' features and the discriminator (standardized by the data's feature statistics), with a
        class embedding for every class of the split."""
        features = self.classifier.train_features(device, self.chunk_size).float()  # [T, F]
        labels = train_split_labels(self.data).long().cpu()  # [T]
        self.real = features, labels if self.class_conditional else torch.full_like(labels, -1)
        num_classes = int(self.data.train_labels.max()) + 1
        with seeded(self.seed):
            self.model = ProjectionDiscriminator(features.shape[1], num_classes, self.hidden)
        self.model.mean.copy_(features.mean(0))
        self.model.std.copy_(features.std(0).clamp_min(1e-6))
        self.optimizer = torch.optim.Adam(self.model.parameters(), lr=self.lr, betas=(0.5, 0.999))
        self.apply_restored()

    def real_like(self, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Train-split features drawn at random, each of the class in ``labels [n]`` (any class for a null label)."""
        features, classes = self.real
        rows = torch.empty(len(labels), dtype=torch.long)
        for c in labels.unique().tolist():
            pool = torch.nonzero(classes == c)[:, 0] if c >= 0 else torch.arange(len(classes))
            picks = labels == c
            rows[picks] = pool[torch.randint(len(pool), (int(picks.sum()),), generator=self.generator)]
        return features[rows], classes[rows].where(labels >= 0, torch.full_like(labels, -1))

    def train_steps(self, steps: int) -> None:
        """``steps`` Adam steps of the logistic loss: buffer samples (label 0) against data of their classes (1)."""
        fake_features, fake_labels = self.fake
        self.model.train()
        with torch.enable_grad():
            for _ in range(steps):
                rows = torch.randint(len(fake_features), (self.batch_size,), generator=self.generator)
                real_features, real_labels = self.real_like(fake_labels[rows])
                logits = self.model(torch.cat([real_features, fake_features[rows]]),
                                    torch.cat([real_labels, fake_labels[rows]]))  # [2n]
                target = torch.cat([torch.ones(len(rows)), torch.zeros(len(rows))])
                loss = F.binary_cross_entropy_with_logits(logits, target)
                self.optimizer.zero_grad(set_to_none=True)
                loss.backward()
                self.optimizer.step()
        self.model.eval()

    @torch.no_grad()
    def __call__(self, images: torch.Tensor, targets: torch.Tensor | None = None, meta: dict | None = None):
        labels = request_groups(len(images), meta, self.class_conditional, "discriminator")  # [N]
        if self.model is None:
            self.build(images.device)
        features = self.features(images)  # [N, F]
        if self.learning:
            self.learn(features, labels, images.device)
        reward = self.model(features, labels)  # [N]
        if self.logit_bound is not None:
            reward = reward.clamp(-self.logit_bound, self.logit_bound)
        reward = reward.to(images.device)
        return reward, {"disc_logit": reward}

    def learn(self, features: torch.Tensor, labels: torch.Tensor, device) -> None:
        """Add the global batch's ``features [N, F]`` and ``labels [N]`` to the buffer, then train (the warm-up
        steps first, on the first batch)."""
        gathered = [distributed.gather_rows(x.to(device)).cpu() for x in (features, labels)]
        finite = gathered[0].isfinite().all(1)  # a non-finite image's features would make every weight NaN
        gathered = [x[finite] for x in gathered]
        first = self.fake is None
        if first and not finite.any():  # nothing to learn from yet
            return
        buffered = gathered if first else [torch.cat([old, new]) for old, new in zip(self.fake, gathered, strict=True)]
        self.fake = tuple(x[-self.buffer_size:] for x in buffered)  # the newest buffer_size samples
        self.train_steps(self.warmup_steps + self.steps if first else self.steps)

    def state_dict(self) -> dict:
        if self.model is None:
            return self.restored or {}
        return {"model": self.model.state_dict(), "optimizer": self.optimizer.state_dict(),
                "buffer": list(self.fake) if self.fake is not None else [], "generator": self.generator.get_state()}

    def load_state_dict(self, state: dict) -> None:
        self.restored = state or None
        if self.model is not None:
            self.apply_restored()

    def apply_restored(self) -> None:
        """The checkpoint's discriminator, optimizer, buffer and random stream, in place of the fresh ones."""
        if self.restored:
            self.model.load_state_dict(self.restored["model"])
            self.optimizer.load_state_dict(self.restored["optimizer"])
            self.fake = tuple(self.restored["buffer"]) or None
            self.generator.set_state(self.restored["generator"])
        self.restored = None
