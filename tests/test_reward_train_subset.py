"""The rewards that read train images as their reference (loo_fd, discriminator, coverage, recall) read at most
``TRAIN_IMAGES`` of them, the judge's fixed subset of a larger split, with those rows' labels; coverage's and recall's
distances are computed a block at a time."""


import pytest
import torch
from torch import nn
from train_split import TrainSplit, stand_in_classifier

import rlar.eval.model.manifold
import rlar.reward.classifier
from rlar.data.batches import random_rows
from rlar.eval.model.frechet import gaussian_fit
from rlar.eval.model.manifold import knn_radii
from rlar.eval.model.memorization import TRAIN_SEED
from rlar.reward.coverage import CoverageReward, RecallReward, coverage_shares, recall_shares, split_credit
from rlar.reward.discriminator import DiscriminatorReward
from rlar.reward.loo_fd import LeaveOneOutFDReward

SPLIT, LIMIT = 60, 24  # train images, and the (monkeypatched) TRAIN_IMAGES the rewards read


class Flatten(nn.Module):
    def features(self, images):
        return images.flatten(1)  # [N, C*H*W]


class ReadRows(TrainSplit):
    """A train split that records the rows whose images are read."""

    def __init__(self, images: torch.Tensor, labels: torch.Tensor):
        super().__init__(images, labels)
        self.read: list[int] = []

    def train_batches(self, index_batches):
        self.read += [int(i) for idx in index_batches for i in idx]
        return super().train_batches(index_batches)


@pytest.fixture
def split(monkeypatch):
    """``(data, features [LIMIT, 2], labels [LIMIT])``: a split of ``SPLIT`` images [1, 1, 2] whose class c lies near
    (10c, 10c), with the subset's features and labels; class 3 only outside the subset."""
    monkeypatch.setattr(rlar.reward.classifier, "TRAIN_IMAGES", LIMIT)
    rows = random_rows(SPLIT, LIMIT, TRAIN_SEED)  # [LIMIT]
    labels = torch.arange(SPLIT) % 3
    labels[next(i for i in range(SPLIT) if i not in rows.tolist())] = 3
    images = 10.0 * labels.view(-1, 1, 1, 1) + torch.randn(SPLIT, 1, 1, 2, generator=torch.Generator().manual_seed(0))
    return ReadRows(images, labels), images.flatten(1)[rows], labels[rows]


def with_flat_features(reward):
    """``reward`` with the identity's features (images [N, 1, 1, 2] -> [N, 2]) in place of its classifier."""
    reward.classifier = stand_in_classifier(reward.data, Flatten())
    return reward


def test_loo_fd_reads_the_subset_and_fits_each_class_on_its_rows(split):
    data, features, labels = split
    reference = with_flat_features(LeaveOneOutFDReward(data, None, class_conditional=True)).data_moments("cpu")
    assert data.read == random_rows(SPLIT, LIMIT, TRAIN_SEED).tolist()
    assert sorted(reference) == [-1, 0, 1, 2]
    for g, moments in reference.items():
        rows = features.double() if g < 0 else features.double()[labels == g]
        assert all(torch.equal(a, b) for a, b in zip(moments, gaussian_fit(rows), strict=True))


def test_the_discriminator_reads_the_subset_and_embeds_every_class_of_the_split(split):
    data, features, labels = split
    reward = with_flat_features(DiscriminatorReward(data, None, hidden=8))
    reward.build("cpu")
    assert data.read == random_rows(SPLIT, LIMIT, TRAIN_SEED).tolist()
    assert torch.equal(reward.real[0], features) and torch.equal(reward.real[1], labels)
    assert torch.equal(reward.model.mean, features.mean(0))
    assert reward.model.embed.num_embeddings == 4  # class 3 is outside the subset


@pytest.mark.parametrize("kind", [CoverageReward, RecallReward])
def test_coverage_and_recall_read_the_subset_and_group_it_by_its_labels(split, kind):
    data, features, labels = split
    manifold = with_flat_features(kind(data, None, k=3)).data_manifold("cpu")
    assert data.read == random_rows(SPLIT, LIMIT, TRAIN_SEED).tolist()
    assert sorted(manifold) == [-1, 0, 1, 2]
    for g, (real, radii) in manifold.items():
        expected = features.double() if g < 0 else features.double()[labels == g]
        assert torch.equal(real, expected)
        assert radii is None if kind is RecallReward else torch.equal(radii, knn_radii(expected, 3))


def test_coverage_and_recall_compute_distances_a_block_at_a_time_with_the_whole_matrixs_shares(monkeypatch):
    g = torch.Generator().manual_seed(0)
    samples, bank, real = (torch.randn(n, 3, generator=g, dtype=torch.float64) for n in (6, 5, 30))
    generated = torch.cat([samples, bank])  # [11, 3]
    radii = knn_radii(real, 3)  # [30]
    whole = (split_credit(torch.cdist(generated, real) <= radii[None], 6),
             split_credit(torch.cdist(generated, real) <= knn_radii(generated, 3)[:, None], 6))
    monkeypatch.setattr(rlar.eval.model.manifold, "ROWS", 4)
    monkeypatch.setattr(rlar.eval.model.manifold, "COLUMNS", 8)
    shapes, cdist = [], torch.cdist
    monkeypatch.setattr(torch, "cdist", lambda a, b: shapes.append((len(a), len(b))) or cdist(a, b))
    assert torch.equal(coverage_shares(samples, bank, real, radii), whole[0])
    assert torch.equal(recall_shares(samples, bank, real, 3), whole[1])
    assert len(shapes) > 2 and max(r for r, _ in shapes) <= 4 and max(c for _, c in shapes) <= 8
