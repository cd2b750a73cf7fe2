"""The judge's fidelity and diversity metrics (rlar/eval/model/manifold.py): hand-built cases and brute force."""

import math

import pytest
import torch

from rlar.eval.model import manifold
from rlar.eval.model.manifold import class_spreads, precision_recall, relative_diversity


def on_a_line(*xs):
    return torch.tensor([[x, 0.0] for x in xs])  # [N, 2]


def test_precision_and_recall_by_hand():
    # k=1 radii: real 0, 1, 3 -> 1, 1, 2 (balls [-1, 1], [0, 2], [1, 5]); fake -2, 0.2, 4.9, 6 -> 2.2, 2.2, 1.1, 1.1
    # precise: 0.2 and 4.9 (not -2, not 6) -> 1/2; recalled: 0 and 1 in [-2, 2.4], 3 in no fake ball -> 2/3
    precision, recall = precision_recall(on_a_line(0, 1, 3), on_a_line(-2, 0.2, 4.9, 6), k=1)
    assert precision == pytest.approx(1 / 2) and recall == pytest.approx(2 / 3)


def brute_force(real, fake, k):
    def dist(a, b):
        return math.sqrt(sum((x - y) ** 2 for x, y in zip(a, b, strict=True)))

    def radius(points, i):
        return sorted(dist(points[i], q) for j, q in enumerate(points) if j != i)[k - 1]

    def covered(points, centres):
        radii = [radius(centres, j) for j in range(len(centres))]
        return sum(any(dist(p, c) <= r for c, r in zip(centres, radii, strict=True)) for p in points) / len(points)

    real, fake = real.tolist(), fake.tolist()
    return covered(fake, real), covered(real, fake)


@pytest.mark.parametrize("seed,rows", [(0, 512), (1, 512), (2, 7)])  # 7: distances a few rows at a time
def test_precision_and_recall_match_brute_force_at_k3(seed, rows, monkeypatch):
    monkeypatch.setattr(manifold, "ROWS", rows)
    g = torch.Generator().manual_seed(seed)
    real, fake = torch.randn(40, 3, generator=g), 0.7 * torch.randn(30, 3, generator=g) + 0.8
    precision, recall = precision_recall(real, fake, k=3)
    expected = brute_force(real, fake, 3)
    assert (precision, recall) == pytest.approx(expected) and 0 < precision < 1 and 0 < recall < 1


def test_precision_and_recall_need_more_than_k_points():
    assert all(math.isnan(v) for v in precision_recall(torch.randn(10, 2), torch.randn(3, 2), k=3))
    assert precision_recall(torch.randn(10, 2), torch.randn(4, 2), k=3)[0] >= 0


def test_diversity_by_hand():
    real = torch.tensor([[0.0, 0], [3, 4], [0, 0], [0, 1], [0, 2]])
    real_labels = torch.tensor([0, 0, 1, 1, 1])  # class spreads: 5 and (1 + 2 + 1) / 3 = 4/3
    fake = torch.tensor([[1.0, 1], [1, 1], [0, 0], [0, 2], [9, 9]])
    fake_labels = torch.tensor([0, 0, 1, 1, 2])  # class spreads: 0 (collapsed) and 2; class 2 has one sample
    assert class_spreads(real, real_labels) == pytest.approx({0: 5.0, 1: 4 / 3})
    assert class_spreads(fake, fake_labels) == pytest.approx({0: 0.0, 1: 2.0})
    assert relative_diversity(real, real_labels, fake, fake_labels) == pytest.approx(2 / (5 + 4 / 3))
    assert relative_diversity(real, real_labels, real, real_labels) == pytest.approx(1.0)
    assert math.isnan(relative_diversity(real, real_labels, fake[4:], fake_labels[4:]))
