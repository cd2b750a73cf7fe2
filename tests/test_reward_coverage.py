"""reward=coverage: each sample's share of the real points it covers, by hand and against brute-force Shapley
values of the coverage game."""

import itertools
import math
from types import SimpleNamespace

import pytest
import torch
from torch import nn

from rlar.config.store import compose_config
from rlar.config.validate import ConfigError, check_config
from rlar.eval.model.manifold import knn_radii
from rlar.loop import train_rl_loop
from rlar.reward.coverage import CoverageReward, coverage_shares
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


class Flatten(nn.Module):
    def features(self, images):
        return images.flatten(1)  # [N, C*H*W]


def reward_on(train_images, train_labels, **options):
    """The reward with the identity's features (images [N, 1, 1, 2] -> [N, 2]) in place of a classifier."""
    reward = CoverageReward(SimpleNamespace(train_images=train_images, train_labels=train_labels), None, **options)
    reward.classifier = SimpleNamespace(get=lambda device: Flatten())
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


def test_bad_settings_and_missing_labels_are_refused():
    train = torch.randn(6, 1, 1, 2)
    with pytest.raises(ValueError, match="reward.k"):
        CoverageReward(None, None, k=0)
    with pytest.raises(ValueError, match="reward.bank_size"):
        CoverageReward(None, None, bank_size=-1)
    with pytest.raises(ValueError, match="lower reward.k"):
        reward_on(train, torch.arange(6) % 3, k=3)(torch.randn(2, 1, 1, 2), None, {"labels": torch.tensor([0, 1])})
    with pytest.raises(ValueError, match="meta\\['labels'\\]"):
        reward_on(train, torch.zeros(6, dtype=torch.long))(torch.randn(2, 1, 1, 2))


def test_coverage_reads_its_own_classifier_never_the_judge(tmp_path):
    cfg = compose_config(["reward=coverage", f"cache_dir={tmp_path}"])
    assert cfg.reward.classifier.train.seed != cfg.eval.classifier_model.train.seed
    check_config(cfg)
    judge = compose_config(["reward=coverage", f"cache_dir={tmp_path}", "reward.classifier.train.seed=0"])
    with pytest.raises(ConfigError, match="judge"):
        check_config(judge)


@pytest.mark.slow
def test_a_tiny_run_trains_on_coverage_in_a_mix_and_checkpoints_its_bank(tiny, tmp_path, tb_scalars):
    cfg = compose_config([*tiny, "reward=discriminator_loo_fd_class", "+reward@reward.components.cov=coverage",
                          "+reward.weights.cov=1.0", "reward.components.cov.bank_size=6"])
    check_config(cfg)
    summary = train_rl_loop(cfg, tmp_path)
    shares = tb_scalars(tmp_path, "reward/cov")
    assert len(shares) == 2 and all(0 <= s <= 1 for s in shares)  # a mean share of a class's train digits
    assert math.isfinite(summary["eval_fd_after"])
    banks = torch.load(tmp_path / "checkpoints" / "last.pt", weights_only=True)["reward"]["cov"]["bank"]
    assert banks and all(b.ndim == 2 and 0 < len(b) <= 6 for b in banks.values())
