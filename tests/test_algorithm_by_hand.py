import math

import pytest
import torch

from rlar.algorithm.advantages import group_advantages
from rlar.algorithm.algorithms import GRPO, Reinforce
from rlar.algorithm.losses import aggregate, clipped_surrogate, reinforce_loss
from rlar.algorithm.update import group_minibatches


def test_group_advantages_by_hand():
    rewards = torch.tensor([1.0, 2.0, 3.0, 5.0, 5.0, 5.0])
    adv, stats = group_advantages(rewards, 3, eps=0.0 + 1e-12)
    # group 1: mean 2, unbiased std 1 -> (-1, 0, 1); group 2: all equal -> 0
    assert torch.allclose(adv, torch.tensor([-1.0, 0.0, 1.0, 0.0, 0.0, 0.0]))
    assert stats["adv/frac_zero_std"] == 0.5


def test_group_advantages_batch_scale_and_none():
    rewards = torch.tensor([0.0, 2.0, 10.0, 14.0])
    centered = torch.tensor([-1.0, 1.0, -2.0, 2.0])
    none, _ = group_advantages(rewards, 2, scale="none")
    assert torch.allclose(none, centered)
    batch, _ = group_advantages(rewards, 2, scale="batch")
    assert torch.allclose(batch, centered / rewards.std(), atol=1e-6)  # std over the batch: 6.48...


def test_group_advantages_clip_and_nan():
    rewards = torch.tensor([0.0, 1.0, float("nan"), 2.0])
    adv, stats = group_advantages(rewards, 4, clip=0.5)
    # valid: 0, 1, 2 -> mean 1, std 1 -> -1, 0, 1 clipped to +-0.5; NaN -> 0
    assert torch.allclose(adv, torch.tensor([-0.5, 0.0, 0.0, 0.5]))
    assert stats["reward/nan_count"] == 1.0


def test_unknown_scale_is_refused():
    with pytest.raises(ValueError, match="scale"):
        group_advantages(torch.zeros(4), 2, scale="rank")


def test_reinforce_loss_by_hand():
    logp = torch.tensor([[-1.0, -2.0], [-0.5, -0.5]])
    adv = torch.tensor([1.0, -2.0])
    mask = torch.tensor([[True, True], [True, False]])
    loss, _ = reinforce_loss(logp, adv, mask)
    # -( 1 * (-3) + (-2) * (-0.5) ) / 2 = -(-3 + 1) / 2 = 1
    assert loss.item() == pytest.approx(1.0)


def test_clipped_surrogate_by_hand():
    old = torch.zeros(2, 1)
    logp = torch.tensor([[math.log(1.5)], [math.log(0.5)]])
    adv = torch.tensor([1.0, 1.0])
    loss, stats = clipped_surrogate(logp, old, adv, torch.ones(2, 1, dtype=torch.bool), clip_eps=0.2)
    # row 1: max(-1.5, -1.2) = -1.2 ; row 2: max(-0.5, -0.8) = -0.5 ; mean = -0.85
    assert loss.item() == pytest.approx(-0.85)
    assert stats["policy/clipfrac"] == 1.0
    assert stats["policy/ratio_max_abs_dev"] == pytest.approx(0.5)


def test_aggregation_token_vs_sequence():
    values = torch.tensor([[1.0, 1.0, 1.0], [4.0, 0.0, 0.0]])
    mask = torch.tensor([[True, True, True], [True, False, False]])
    assert aggregate(values, mask, "token").item() == pytest.approx(7 / 4)
    assert aggregate(values, mask, "sequence").item() == pytest.approx((1 + 4) / 2)


def test_grpo_refuses_fewer_than_two_generations():
    with pytest.raises(ValueError, match="at least 2 generations"):
        GRPO(num_generations=1)


def test_reinforce_is_on_policy():
    with pytest.raises(ValueError, match="on-policy"):
        Reinforce(epochs=2)


def test_minibatches_keep_groups_whole():
    batches = list(group_minibatches(12, 3, 6, torch.Generator().manual_seed(0)))
    assert sorted(torch.cat(batches).tolist()) == list(range(12))
    for idx in batches:
        groups = (idx // 3).view(-1, 3)
        assert (groups == groups[:, :1]).all()
