"""reward=coverage and reward=recall: each sample's share of the real points it covers (with the real points' balls,
or the generated points' own), by hand and against brute-force Shapley values of the coverage game and the judge's
recall."""

import itertools
import math

import pytest
import torch
from torch import nn
from train_split import TrainSplit, stand_in_classifier

from rlar.config.store import compose_config
from rlar.config.validate import ConfigError, check_config
from rlar.eval.model.manifold import knn_radii, precision_recall
from rlar.loop import train_rl_loop
from rlar.reward.coverage import CoverageReward, RecallReward, coverage_shares, recall_shares
from rlar.reward.scoring import scoring_only


def test_coverage_shares_by_hand_on_a_line():
    real = torch.tensor([[0.0], [1.0], [2.0], [10.0]], dtype=torch.float64)
    radii = torch.tensor([0.5, 0.5, 0.5, 0.5], dtype=torch.float64)
    samples = torch.tensor([[0.1], [1.9], [5.0]], dtype=torch.float64)
    bank = torch.tensor([[2.2]], dtype=torch.float64)
    # sample 0 alone covers real 0; real 2 is shared by sample 1 and the bank; sample 2 is off the manifold
    expected = torch.tensor([1.0, 0.5, 0.0], dtype=torch.float64) / 4
    assert torch.allclose(coverage_shares(samples, bank, real, radii), expected)


def shapley(players, value):
    """Brute-force Shapley values: each player's marginal value averaged over every order of the players."""
    n, totals = len(players), torch.zeros(len(players), dtype=torch.float64)
    for order in itertools.permutations(range(n)):
        for position, player in enumerate(order):
            before = list(order[:position])
            totals[player] += value(before + [player]) - value(before)
    return totals / math.factorial(n)


def test_shares_are_the_shapley_values_of_coverage_and_sum_to_it():
    g = torch.Generator().manual_seed(0)
    real = torch.randn(12, 2, generator=g, dtype=torch.float64)
    radii = knn_radii(real, 3)
    points = torch.randn(5, 2, generator=g, dtype=torch.float64) * 0.8  # 3 samples, then a bank of 2

    def covered(rows):  # the fraction of real points inside a ball that holds one of these points
        inside = (torch.cdist(points[rows], real) <= radii[None]).any(0) if rows else torch.zeros(12, dtype=bool)
        return float(inside.double().mean())

    shares = coverage_shares(points[:3], points[3:], real, radii)
    assert torch.allclose(shares, shapley(list(range(5)), covered)[:3], atol=1e-12)
    everything = coverage_shares(points, points[:0], real, radii)  # no bank: the shares add up to the coverage
    assert math.isclose(float(everything.sum()), covered(list(range(5))), abs_tol=1e-12)


def test_recall_shares_by_hand_on_a_line():
    # generated 0, 1, 2, 10 with k = 1: balls of radius 1, 1, 1 and 8 (the outlier's reaches its nearest, 2)
    samples = torch.tensor([[0.0], [1.0], [10.0]], dtype=torch.float64)
    bank = torch.tensor([[2.0]], dtype=torch.float64)
    real = torch.tensor([[0.5], [5.0], [20.0]], dtype=torch.float64)
    # real 0.5 lies in the balls of 0 and 1 (credit 1/3 split in two); real 5 only in the outlier's; real 20 in none
    expected = torch.tensor([1 / 6, 1 / 6, 1 / 3], dtype=torch.float64)
    assert torch.allclose(recall_shares(samples, bank, real, k=1), expected)
    assert not recall_shares(samples[:1], bank[:0], real, k=1).any()  # one point: no ball, no share


def test_recall_shares_are_shapley_values_that_sum_to_the_judges_recall():
    g = torch.Generator().manual_seed(2)
    real, points = torch.randn(15, 2, generator=g, dtype=torch.float64), torch.randn(6, 2, generator=g,
                                                                                     dtype=torch.float64)
    everything = recall_shares(points, points[:0], real, k=3)  # no bank: the shares add up to the recall
    assert math.isclose(float(everything.sum()), precision_recall(real, points, k=3)[1], abs_tol=1e-12)
    # a share does not depend on which generated points are the batch and which the bank
    assert torch.allclose(recall_shares(points[:4], points[4:], real, k=3), everything[:4], atol=1e-15)
    assert everything.gt(0).sum() >= 2  # a case in which several samples share the recall
    radii = knn_radii(points, 3)  # the balls are fixed by all generated points: a coverage game over them

    def covered(rows):
        inside = (torch.cdist(points[rows], real) <= radii[rows, None]).any(0) if rows else torch.zeros(15, dtype=bool)
        return float(inside.double().mean())

    assert torch.allclose(everything, shapley(list(range(6)), covered), atol=1e-12)


class Flatten(nn.Module):
    def features(self, images):
        return images.flatten(1)  # [N, C*H*W]


def reward_on(train_images, train_labels, kind=CoverageReward, **options):
    """The reward with the identity's features (images [N, 1, 1, 2] -> [N, 2]) in place of a classifier."""
    reward = kind(TrainSplit(train_images, train_labels), None, **options)
    reward.classifier = stand_in_classifier(reward.data, Flatten())
    return reward


def test_the_bank_keeps_the_last_samples_per_class_and_only_while_learning():
    g = torch.Generator().manual_seed(1)
    train, train_labels = torch.randn(20, 1, 1, 2, generator=g), torch.arange(20) % 2
    train[train_labels == 1] += 5.0
    reward = reward_on(train, train_labels, bank_size=3)
    first, second = torch.randn(4, 1, 1, 2, generator=g), torch.randn(4, 1, 1, 2, generator=g)
    labels = torch.tensor([0, 0, 1, 0])
    r1, parts = reward(first, None, {"labels": labels})
    real0 = train.flatten(1)[train_labels == 0].double()
    assert torch.allclose(r1[labels == 0].double(), coverage_shares(first.flatten(1)[labels == 0].double(),
                                                                    real0[:0], real0, knn_radii(real0, 3)), atol=1e-6)
    assert parts["coverage"] is r1 and len(reward.bank[0]) == 3 and len(reward.bank[1]) == 1
    bank = reward.bank[0].clone()
    with scoring_only(reward):
        r_eval, _ = reward(second, None, {"labels": labels})
    assert torch.equal(reward.bank[0], bank)  # an evaluation scores against the bank without moving it
    resumed = reward_on(train, train_labels, bank_size=3)
    resumed.load_state_dict(reward.state_dict())
    assert torch.equal(resumed(second, None, {"labels": labels})[0], r_eval)
    r2, _ = reward(second, None, {"labels": labels})
    expected = coverage_shares(second.flatten(1)[labels == 0].double(), bank, real0, knn_radii(real0, 3))
    assert torch.allclose(r2[labels == 0].double(), expected, atol=1e-6)
    assert torch.equal(reward.bank[0], torch.cat([bank, second.flatten(1)[labels == 0].double()])[-3:])


def test_recall_rewards_a_sample_apart_from_the_policys_others_over_near_copies():
    g = torch.Generator().manual_seed(3)
    train = torch.randn(40, 1, 1, 2, generator=g)
    reward = reward_on(train, torch.zeros(40, dtype=torch.long), kind=RecallReward, bank_size=8)
    copies = torch.zeros(6, 1, 1, 2) + 0.01 * torch.randn(6, 1, 1, 2, generator=g)  # six near-copies at the mode
    apart = torch.tensor([1.5, -1.0]).reshape(1, 1, 1, 2)  # one on the data, away from them
    r, parts = reward(torch.cat([copies, apart]), None, {"labels": torch.zeros(7, dtype=torch.long)})
    assert parts["recall"] is r and r[-1] > 3 * r[:-1].max()
    assert torch.allclose(r.double(), recall_shares(torch.cat([copies, apart]).flatten(1).double(),
                                                    train.flatten(1)[:0].double(), train.flatten(1).double(), 3),
                          atol=1e-6)
    assert len(reward.bank[0]) == 7  # the same bank as coverage's


@pytest.mark.parametrize("kind", [CoverageReward, RecallReward])
def test_a_non_finite_image_is_unscored_out_of_the_bank_and_the_others_scored_as_without_it(kind):
    g = torch.Generator().manual_seed(4)
    train = torch.randn(20, 1, 1, 2, generator=g)
    images = torch.randn(6, 1, 1, 2, generator=g)
    images[2] = float("nan")  # a failed decode
    kept = images[[0, 1, 3, 4, 5]]
    reward, alone = (reward_on(train, torch.zeros(20, dtype=torch.long), kind=kind, bank_size=8) for _ in range(2))
    r, _ = reward(images, None, {"labels": torch.zeros(6, dtype=torch.long)})
    expected, _ = alone(kept, None, {"labels": torch.zeros(5, dtype=torch.long)})
    assert r[2].isnan() and torch.equal(r[[0, 1, 3, 4, 5]], expected)
    assert torch.equal(reward.bank[0], kept.flatten(1).double())


def test_bad_settings_and_missing_labels_are_refused():
    train = torch.randn(6, 1, 1, 2)
    with pytest.raises(ValueError, match="reward.k"):
        CoverageReward(None, None, k=0)
    with pytest.raises(ValueError, match="reward.bank_size"):
        CoverageReward(None, None, bank_size=-1)
    with pytest.raises(ValueError, match="lower reward.k"):
        reward_on(train, torch.arange(6) % 3, k=3)(torch.randn(2, 1, 1, 2), None, {"labels": torch.tensor([0, 1])})
    recall = reward_on(train, torch.arange(6) % 3, kind=RecallReward, k=3)  # its balls are the samples': 2 digits do
    assert recall(torch.randn(2, 1, 1, 2), None, {"labels": torch.tensor([0, 1])})[0].shape == (2,)
    assert all(radii is None for _, radii in recall.reference.values())  # no train radii computed
    with pytest.raises(ValueError, match="meta\\['labels'\\]"):
        reward_on(train, torch.zeros(6, dtype=torch.long))(torch.randn(2, 1, 1, 2))


@pytest.mark.parametrize("option", ["coverage", "recall"])
def test_coverage_and_recall_read_their_own_classifier_never_the_judge(option, tmp_path):
    cfg = compose_config([f"reward={option}", f"cache_dir={tmp_path}"])
    assert cfg.reward.classifier.train.seed != cfg.eval.classifier_model.train.seed
    check_config(cfg)
    judge = compose_config([f"reward={option}", f"cache_dir={tmp_path}", "reward.classifier.train.seed=0"])
    with pytest.raises(ConfigError, match="judge"):
        check_config(judge)


@pytest.mark.slow
@pytest.mark.parametrize("option", ["coverage", "recall"])
def test_a_tiny_run_trains_on_the_term_in_a_mix_and_checkpoints_its_bank(option, tiny, tmp_path, tb_scalars):
    cfg = compose_config([*tiny, "reward=discriminator_loo_fd_class", f"+reward@reward.components.div={option}",
                          "+reward.weights.div=1.0", "reward.components.div.bank_size=6"])
    check_config(cfg)
    summary = train_rl_loop(cfg, tmp_path)
    shares = tb_scalars(tmp_path, "reward/div")
    assert len(shares) == 2 and all(0 <= s <= 1 for s in shares)  # a mean share of a class's train digits
    assert math.isfinite(summary["eval_fd_after"])
    banks = torch.load(tmp_path / "checkpoints" / "last.pt", weights_only=True)["reward"]["div"]["bank"]
    assert banks and all(b.ndim == 2 and 0 < len(b) <= 6 for b in banks.values())
