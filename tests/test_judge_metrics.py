"""The judge's fidelity and diversity metrics (rlar/eval/model/manifold.py): hand-built cases and brute force."""

import math

import pytest
import torch

from rlar.eval.model import manifold
from rlar.eval.model.manifold import class_spreads, density_coverage, precision_recall, relative_diversity
from rlar.eval.model.memorization import copy_threshold, memorization
from rlar.eval.model.scorer import EvalModel


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


def test_density_and_coverage_by_hand():
    # k=1 balls around the real points 0, 1, 3: [-1, 1], [0, 2], [1, 5]; fake -2, 0.2, 6, 6.5
    # 0.2 lies in the first two balls, the others in none: density (0 + 2 + 0 + 0) / (1 * 4); the third ball is empty
    density, coverage = density_coverage(on_a_line(0, 1, 3), on_a_line(-2, 0.2, 6, 6.5), k=1)
    assert density == pytest.approx(1 / 2) and coverage == pytest.approx(2 / 3)


def test_an_outlying_sample_widens_recall_but_not_coverage():
    # k=1: the samples 0.1 and 1.1 reach the real points 0, 1 and 2 (recall 3/5); a sample at 30 has a ball of
    # radius 28.9 that reaches 10 and 11 too (recall 1). The real points' balls, [-1, 1], [0, 2], [1, 3], [9, 11],
    # [10, 12], hold 0.1 twice and 1.1 twice either way: coverage 3/5; density 4 / 2, then 4 / 3 (30 in none)
    real, near = on_a_line(0, 1, 2, 10, 11), on_a_line(0.1, 1.1)
    far = torch.cat([near, on_a_line(30)])
    assert precision_recall(real, near, k=1)[1] == pytest.approx(3 / 5) and precision_recall(real, far, k=1)[1] == 1
    assert density_coverage(real, near, k=1) == (pytest.approx(2), pytest.approx(3 / 5))
    assert density_coverage(real, far, k=1) == (pytest.approx(4 / 3), pytest.approx(3 / 5))


@pytest.mark.parametrize("seed,rows", [(0, 512), (1, 7)])  # 7: distances a few rows at a time
def test_density_and_coverage_match_the_authors_implementation(seed, rows, monkeypatch):
    prdc = pytest.importorskip("prdc")  # a dev dependency: installed wherever the tests are
    monkeypatch.setattr(manifold, "ROWS", rows)
    g = torch.Generator().manual_seed(seed)
    real, fake = torch.randn(60, 4, generator=g), 0.6 * torch.randn(45, 4, generator=g) + 0.5
    expected = prdc.compute_prdc(real.numpy(), fake.numpy(), nearest_k=5)
    density, coverage = density_coverage(real, fake, k=5)
    assert density == pytest.approx(expected["density"]) and coverage == pytest.approx(expected["coverage"])
    assert precision_recall(real, fake, k=5) == pytest.approx((expected["precision"], expected["recall"]))
    assert 0 < coverage < 1 and density > 0


def test_density_and_coverage_need_more_than_k_real_points():
    assert all(math.isnan(v) for v in density_coverage(torch.randn(5, 2), torch.randn(8, 2), k=5))
    assert all(math.isnan(v) for v in density_coverage(torch.randn(8, 2), torch.randn(0, 2), k=5))


class Features:
    """A stand-in for the judge's classifier: its features are the images' pixels, its classes their first one."""

    metrics = {"eval_accuracy": 1.0}

    def to(self, device):
        return self

    def features(self, images):
        return images.flatten(1)

    def head(self, features):
        return torch.nn.functional.one_hot(features[:, 0].long(), 10).float()


def test_coverage_is_read_over_one_draw_per_item_and_averaged():
    real = torch.rand(12, 1, 1, 8, generator=torch.Generator().manual_seed(0))
    judge = EvalModel(Features(), real, torch.zeros(12, dtype=torch.long), "cpu")
    first, second = torch.rand(2, 12, 8, generator=torch.Generator().manual_seed(1)) + 0.2
    samples = torch.stack([first, second], 1).flatten(0, 1)  # [24, 8]: each item's two draws adjacent
    read = judge.metrics(samples, torch.ones(24, dtype=torch.bool), torch.zeros(24, dtype=torch.long), per_item=2)
    each = [density_coverage(real.flatten(1), draw, k=5) for draw in (first, second)]
    assert read["eval/coverage"] == pytest.approx((each[0][1] + each[1][1]) / 2)
    assert read["eval/density"] == pytest.approx((each[0][0] + each[1][0]) / 2)
    assert read["eval/coverage"] < density_coverage(real.flatten(1), samples, k=5)[1]  # both draws at once: more
    with pytest.raises(ValueError, match="not 5 draws per item"):
        judge.metrics(samples, torch.ones(24, dtype=torch.bool), torch.zeros(24, dtype=torch.long), per_item=5)


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


def test_memorization_by_hand():
    train, held_out = on_a_line(0, 10), on_a_line(1, 2, 3, 4, 5)  # held-out distances to the train split: 1 ... 5
    threshold = copy_threshold(held_out, train)  # their 5 % quantile: 1 + 0.05 * 4 * (2 - 1)
    assert threshold == pytest.approx(1.2)
    # distances 0 (a copy), 1.2 (on the boundary), 1.5 and 5: two within it
    assert memorization(on_a_line(0, 11.2, 8.5, 5), train, threshold) == pytest.approx(1 / 2)
    assert math.isnan(memorization(on_a_line(), train, threshold))


def test_the_judge_reads_copies_of_its_train_split_and_not_held_out_images():
    g = torch.Generator().manual_seed(0)
    train, held_out = torch.rand(60, 1, 1, 8, generator=g), torch.rand(20, 1, 1, 8, generator=g)
    judge = EvalModel(Features(), held_out, torch.zeros(20, dtype=torch.long), "cpu", train.flatten(1))
    labels, hits = torch.zeros(20, dtype=torch.long), torch.ones(20, dtype=torch.bool)
    copies = judge.metrics(train[:20].flatten(1) + 1e-9, hits, labels)
    # the held-out images themselves: only the nearest of 20 lies within their own 5 % quantile (19 * 0.05 < 1)
    novel = judge.metrics(held_out.flatten(1), hits, labels)
    assert copies["eval/memorization"] == 1 and novel["eval/memorization"] == pytest.approx(1 / 20)
    without_train = EvalModel(Features(), held_out, labels, "cpu")
    assert math.isnan(without_train.metrics(held_out.flatten(1), hits, labels)["eval/memorization"])
