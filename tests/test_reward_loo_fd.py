"""reward=loo_fd: leave-one-out Fréchet-distance contributions, by hand and by brute force with the exact FD."""

import copy
import math

import pytest
import torch
from hydra.utils import instantiate
from torch import nn
from train_split import TrainSplit, stand_in_classifier

from rlar.config.store import compose_config
from rlar.config.validate import check_config
from rlar.eval.model.frechet import frechet_distance, gaussian_fit
from rlar.loop import train_rl_loop
from rlar.reward.loo_fd import LeaveOneOutFDReward, leave_one_out_fd
from rlar.reward.mixture import WeightedReward
from rlar.reward.scoring import scoring_only


def fd_1d(mean1, var1, mean2, var2):
    """The Fréchet distance of two 1-d Gaussians: (m1 - m2)^2 + (s1 - s2)^2."""
    return (mean1 - mean2) ** 2 + (math.sqrt(var1) - math.sqrt(var2)) ** 2


def test_leave_one_out_fd_by_hand_in_one_dimension():
    features = torch.tensor([[0.0], [1.0], [2.0], [3.0]])
    reference = (torch.tensor([1.5]), torch.tensor([[1.0]]))
    total = fd_1d(1.5, 5 / 3, 1.5, 1)  # all four: mean 1.5, unbiased variance 5/3
    outer = fd_1d(2, 1, 1.5, 1)  # without 0: {1, 2, 3}, mean 2, variance 1 (without 3 alike)
    inner = fd_1d(5 / 3, 7 / 3, 1.5, 1)  # without 1: {0, 2, 3}, mean 5/3, variance 7/3 (without 2 alike)
    expected = torch.tensor([outer, inner, inner, outer], dtype=torch.float64) - total
    assert torch.allclose(leave_one_out_fd(features, reference), expected, atol=1e-9)
    assert (expected > 0).all() and expected[1] > expected[0]  # the inner points narrow the too-wide batch most


def brute_force(features, reference, history=None, ema=0.0):
    def moments(x):
        mean, cov = gaussian_fit(x)
        return (mean, cov) if history is None else ((1 - ema) * mean + ema * history[0],
                                                    (1 - ema) * cov + ema * history[1])

    total = frechet_distance(*moments(features), *reference)
    return torch.tensor([frechet_distance(*moments(torch.cat([features[:i], features[i + 1:]])), *reference) - total
                         for i in range(len(features))], dtype=torch.float64)


def random_moments(g, f):
    a = torch.randn(f, f, generator=g, dtype=torch.float64)
    return torch.randn(f, generator=g, dtype=torch.float64), a @ a.T / f


@pytest.mark.parametrize("ema", [0.0, 0.7])
def test_leave_one_out_fd_matches_brute_force_with_a_history(ema):
    g = torch.Generator().manual_seed(0)
    features = torch.randn(6, 3, generator=g, dtype=torch.float64)
    reference, history = random_moments(g, 3), random_moments(g, 3)
    assert torch.allclose(leave_one_out_fd(features, reference, history, ema),
                          brute_force(features, reference, history, ema), atol=1e-9)


def test_fewer_than_three_samples_are_nan():
    assert leave_one_out_fd(torch.randn(2, 3), (torch.zeros(3), torch.eye(3))).isnan().all()


class Flatten(nn.Module):
    def features(self, images):
        return images.flatten(1)  # [N, C*H*W]


def reward_on(train_images, train_labels, **options):
    """The reward with the identity's features (images [N, 1, 1, 2] -> [N, 2]) in place of a classifier."""
    reward = LeaveOneOutFDReward(TrainSplit(train_images, train_labels), None,
                                 **options)
    reward.classifier = stand_in_classifier(reward.data, Flatten())
    return reward


def test_the_reward_mixes_a_moving_average_across_calls():
    g = torch.Generator().manual_seed(1)
    train = torch.randn(20, 1, 1, 2, generator=g)
    reward = reward_on(train, torch.zeros(20, dtype=torch.long), ema=0.5)
    reference = gaussian_fit(train.flatten(1))
    first, second = torch.randn(5, 1, 1, 2, generator=g), torch.randn(4, 1, 1, 2, generator=g)
    r1, parts = reward(first)
    assert torch.allclose(r1.double(), brute_force(first.flatten(1), reference), atol=1e-5) and parts["loo_fd"] is r1
    r2, _ = reward(second)  # the first batch's moments are the history now
    expected = brute_force(second.flatten(1), reference, gaussian_fit(first.flatten(1)), 0.5)
    assert torch.allclose(r2.double(), expected, atol=1e-5)



def test_scoring_only_keeps_the_average_and_a_checkpointed_average_resumes():
    g = torch.Generator().manual_seed(3)
    train = torch.randn(20, 1, 1, 2, generator=g)
    batches = [torch.randn(5, 1, 1, 2, generator=g) for _ in range(3)]
    reward = reward_on(train, torch.zeros(20, dtype=torch.long), ema=0.5)
    mix = WeightedReward({"fd": reward}, {"fd": 1.0})
    mix(batches[0], None)
    state = copy.deepcopy(mix.state_dict())
    with scoring_only(mix):  # an evaluation: scored against the average, which stays
        assert not reward.learning
        mix(batches[1], None)
    assert reward.learning and torch.equal(reward.history[-1][0], state["fd"]["history"]["-1"][0])
    resumed = reward_on(train, torch.zeros(20, dtype=torch.long), ema=0.5)
    WeightedReward({"fd": resumed}, {"fd": 1.0}).load_state_dict(state)
    assert torch.equal(reward(batches[2])[0], resumed(batches[2])[0])

def test_a_group_too_small_to_score_leaves_its_average_and_a_scored_group_moves_its_own():
    g = torch.Generator().manual_seed(4)
    train, train_labels = torch.randn(30, 1, 1, 2, generator=g), torch.arange(30) % 2
    reward = reward_on(train, train_labels, ema=0.5, class_conditional=True)
    first, second = torch.randn(6, 1, 1, 2, generator=g), torch.randn(5, 1, 1, 2, generator=g)
    reward(first, None, {"labels": torch.tensor([0, 0, 0, 1, 1, 1])})  # 3 of each class: both scored
    before = {c: tuple(m.clone() for m in reward.history[c]) for c in (0, 1)}
    assert torch.allclose(before[1][0], first.flatten(1)[3:].mean(0).double())  # no history yet: the batch's mean
    r, _ = reward(second, None, {"labels": torch.tensor([0, 0, 0, 1, 1])})  # class 1: 2 samples, unscored
    assert r[3:].isnan().all() and r[:3].isfinite().all()
    assert all(torch.equal(a, b) for a, b in zip(reward.history[1], before[1], strict=True))
    moved = gaussian_fit(second.flatten(1)[:3].double())
    for now, old, new in zip(reward.history[0], before[0], moved, strict=True):  # 0.5 * batch + 0.5 * history
        assert torch.allclose(now, 0.5 * new + 0.5 * old, atol=1e-12)


def test_class_conditional_scores_each_class_against_its_own_data():
    g = torch.Generator().manual_seed(2)
    train, train_labels = torch.randn(30, 1, 1, 2, generator=g), torch.arange(30) % 2
    train[train_labels == 1] += 5.0
    reward = reward_on(train, train_labels, ema=0.0, class_conditional=True)
    images, labels = torch.randn(8, 1, 1, 2, generator=g), torch.tensor([0, 1, 0, 1, 0, 1, 0, -1])
    r, _ = reward(images, None, {"labels": labels})
    x = images.flatten(1)
    for c in (0, 1):
        rows = labels == c
        expected = brute_force(x[rows], gaussian_fit(train.flatten(1)[train_labels == c]))
        assert torch.allclose(r[rows].double(), expected, atol=1e-4)
    assert r[7].isnan()  # the one null-class request: too few to leave one out
    with pytest.raises(ValueError, match="meta\\['labels'\\]"):
        reward(images)


def test_loo_fd_composes_with_an_instance_reward_in_mix(tmp_path):
    cfg = compose_config(["reward=mix", "+reward@reward.components.fd=loo_fd", "+reward.weights.fd=0.5",
                          f"cache_dir={tmp_path}", "reward.components.fd.classifier.train.steps=3"])
    assert cfg.reward.components.fd.classifier.train.seed != cfg.eval.classifier_model.train.seed
    mixed = instantiate(cfg.reward)
    images = torch.rand(6, 1, 32, 32, generator=torch.Generator().manual_seed(3)) * 2 - 1
    targets = torch.zeros_like(images)
    total, parts = mixed(images, targets, {"labels": torch.zeros(6, dtype=torch.long)})
    expected = -(images - targets).square().flatten(1).mean(1) + 0.5 * parts["fd"] + 0.5 * parts["ssim"]
    assert parts["fd"].isfinite().all() and torch.allclose(total, expected, atol=1e-5)
    with pytest.raises(ValueError, match="reward.ema"):
        LeaveOneOutFDReward(None, None, ema=1.0)


@pytest.mark.slow
def test_a_tiny_run_trains_on_loo_fd(tiny, tmp_path, tb_scalars):
    cfg = compose_config([*tiny, "reward=loo_fd", "reward.classifier.train.steps=20"])
    check_config(cfg)
    summary = train_rl_loop(cfg, tmp_path)
    rollout = tb_scalars(tmp_path, "reward/mean")
    assert len(rollout) == 2 and all(math.isfinite(r) for r in rollout)
    assert tb_scalars(tmp_path, "reward/nonfinite_count") == [0.0, 0.0]
    assert math.isfinite(summary["eval_reward_after"]) and math.isfinite(summary["eval_fd_after"])


def test_a_non_finite_sample_is_left_unscored_and_out_of_the_moments():
    g = torch.Generator().manual_seed(4)
    reward = reward_on(torch.randn(20, 1, 1, 2, generator=g), torch.zeros(20, dtype=torch.long), ema=0.5)
    batch = torch.randn(6, 1, 1, 2, generator=g)
    clean, _ = reward_on(torch.randn(20, 1, 1, 2, generator=torch.Generator().manual_seed(4)),
                         torch.zeros(20, dtype=torch.long), ema=0.5)(batch[[0, 1, 2, 4, 5]])
    batch[3, 0, 0, 1] = float("nan")
    scores, _ = reward(batch)
    assert scores.isnan().tolist() == [i == 3 for i in range(6)]
    torch.testing.assert_close(scores[[0, 1, 2, 4, 5]], clean)  # as if the sample were not there
