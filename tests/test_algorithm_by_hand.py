"""The algorithm pieces against hand-derived numbers: advantages and baselines, GAE, the KL estimators, the losses,
their aggregation, and minibatches that keep groups whole."""

import contextlib
import math

import pytest
import torch

from rlar.algorithm.advantages import group_advantages
from rlar.algorithm.algorithms import GRPO, PPO, Reinforce
from rlar.algorithm.gae import gae_terminal_reward
from rlar.algorithm.kl import exact_kl, k3_kl, token_kl
from rlar.algorithm.losses import aggregate, clipped_surrogate, reinforce_loss
from rlar.algorithm.stats import ConditionStats
from rlar.algorithm.update import group_minibatches, high_entropy_tokens, minibatch_loss
from rlar.config.store import compose_config
from rlar.policy.gpt import GPT
from rlar.rollout.collect import collect_rollout


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
    assert stats["reward/nonfinite_count"] == 1.0


@pytest.mark.parametrize("bad", [float("inf"), float("-inf"), float("nan")])
def test_a_nonfinite_reward_leaves_its_group_and_the_batch_scale_alone(bad):
    rewards = torch.tensor([1.0, bad, 3.0, 0.0, 2.0, 4.0])
    adv, stats = group_advantages(rewards, 3, eps=1e-12)
    # group 1: finite 1, 3 -> mean 2, unbiased std sqrt(2); group 2: mean 2, std 2; the bad reward -> 0
    s2 = math.sqrt(2.0)
    assert torch.allclose(adv, torch.tensor([-1 / s2, 0.0, 1 / s2, -1.0, 0.0, 1.0]))
    assert stats["reward/nonfinite_count"] == 1.0
    batch, _ = group_advantages(rewards, 3, eps=1e-12, scale="batch")
    # centered (-1, 0, 1, -2, 0, 2) over the batch std of the finite 1, 3, 0, 2, 4: sqrt(2.5)
    assert torch.allclose(batch, torch.tensor([-1.0, 0.0, 1.0, -2.0, 0.0, 2.0]) / math.sqrt(2.5))


def test_reinforce_condition_baseline_leaves_an_inf_out():
    algo = Reinforce(num_generations=1, baseline="condition", standardize=False, minibatch_size=1)
    rewards = torch.tensor([1.0, float("inf"), 3.0])
    adv, keep, stats = algo.advantages(rewards, torch.tensor([0, 0, 0]))
    assert adv.tolist() == [-1.0, 0.0, 1.0]  # the batch mean of the finite rewards, 2; the inf -> 0
    assert stats["reward/nonfinite_count"] == 1.0


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


def test_ppo_refuses_a_group_baseline_of_one_generation():
    with pytest.raises(ValueError, match="every advantage would be 0"):
        PPO(num_generations=1, minibatch_size=1)
    PPO(num_generations=1, minibatch_size=1, baseline="batch")  # the batch mean is a baseline
    PPO(num_generations=1, minibatch_size=1, value_head=True)  # GAE replaces the baseline


def test_reinforce_is_on_policy():
    with pytest.raises(ValueError, match="on-policy"):
        Reinforce(epochs=2)


def test_minibatches_keep_groups_whole():
    batches = list(group_minibatches(12, 3, 6, torch.Generator().manual_seed(0)))
    assert sorted(torch.cat(batches).tolist()) == list(range(12))
    for idx in batches:
        groups = (idx // 3).view(-1, 3)
        assert (groups == groups[:, :1]).all()


def test_gae_by_hand():
    values = torch.tensor([[0.5, 0.25, 1.0]])
    mask = torch.ones(1, 3, dtype=torch.bool)
    adv, returns = gae_terminal_reward(values, torch.tensor([2.0]), mask, gamma=1.0, lam=0.5)
    # deltas: t2 = 2 - 1 = 1 ; t1 = 0 + 1 - 0.25 = 0.75 ; t0 = 0 + 0.25 - 0.5 = -0.25
    # A2 = 1 ; A1 = 0.75 + 0.5 * 1 = 1.25 ; A0 = -0.25 + 0.5 * 1.25 = 0.375
    assert torch.allclose(adv, torch.tensor([[0.375, 1.25, 1.0]]))
    assert torch.allclose(returns, adv + values)


def test_gae_with_token_rewards_by_hand():
    values = torch.tensor([[0.5, 0.25, 1.0]])
    mask = torch.ones(1, 3, dtype=torch.bool)
    token = torch.tensor([[-0.1, 0.0, -0.3]])  # paid after tokens 0 and 2
    adv, _ = gae_terminal_reward(values, torch.tensor([2.0]), mask, gamma=1.0, lam=0.5, token_rewards=token)
    # deltas: t2 = 2 - 0.3 - 1 = 0.7 ; t1 = 0 + 1 - 0.25 = 0.75 ; t0 = -0.1 + 0.25 - 0.5 = -0.35
    # A2 = 0.7 ; A1 = 0.75 + 0.5 * 0.7 = 1.1 ; A0 = -0.35 + 0.5 * 1.1 = 0.2
    assert torch.allclose(adv, torch.tensor([[0.2, 1.1, 0.7]]))
    _, returns = gae_terminal_reward(values, torch.tensor([2.0]), mask, 1.0, 1.0, token)
    assert torch.allclose(returns, torch.tensor([[1.6, 1.7, 1.7]]))  # lambda 1: the rewards still to come


def test_gae_with_lambda_one_is_the_monte_carlo_return():
    values = torch.rand(2, 5)
    adv, returns = gae_terminal_reward(values, torch.tensor([1.0, -1.0]), torch.ones(2, 5, dtype=torch.bool), 1.0, 1.0)
    assert torch.allclose(returns, torch.tensor([[1.0] * 5, [-1.0] * 5]), atol=1e-6)


def test_asymmetric_clip_by_hand():
    old = torch.zeros(2, 1)
    logp = torch.log(torch.tensor([[1.5], [0.5]]))
    adv = torch.tensor([1.0, -1.0])
    loss, stats = clipped_surrogate(logp, old, adv, torch.ones(2, 1, dtype=torch.bool), 0.2, clip_eps_high=0.4)
    # row 1 (A=+1): max(-1.5, -1.4) = -1.4 ; row 2 (A=-1): max(0.5, 0.8) = 0.8 ; mean = -0.3
    assert loss.item() == pytest.approx(-0.3)
    assert stats["policy/clipfrac"] == 1.0


def test_constant_aggregation_by_hand():
    values = torch.tensor([[1.0, 1.0, 1.0, 0.0], [4.0, 0.0, 0.0, 0.0]])
    mask = torch.tensor([[True, True, True, False], [True, False, False, False]])
    assert aggregate(values, mask, "constant").item() == pytest.approx(7 / (2 * 4))
    assert aggregate(values, mask, "constant", 10).item() == pytest.approx(7 / 20)


def test_grpo_drops_zero_variance_groups():
    algo = GRPO(num_generations=2, minibatch_size=2, drop_zero_std_groups=True)
    adv, keep, stats = algo.advantages(torch.tensor([1.0, 1.0, 0.0, 2.0]), torch.zeros(4, dtype=torch.long))
    assert keep.tolist() == [False, False, True, True]
    assert stats["adv/frac_zero_std"] == 0.5


def test_a_group_equal_but_for_a_nan_is_dropped_as_zero_variance():
    algo = GRPO(num_generations=4, minibatch_size=4, drop_zero_std_groups=True)
    nan = float("nan")
    rewards = torch.tensor([nan, 0.7, 0.7, 0.7, nan, nan, nan, 0.2, 0.1, nan, 0.3, 0.3])
    _, keep, stats = algo.advantages(rewards, torch.zeros(12, dtype=torch.long))
    assert keep.tolist() == [False] * 8 + [True] * 4  # equal finite rewards, one finite reward, then a spread
    assert stats["adv/frac_zero_std"] == pytest.approx(2 / 3)


def test_reinforce_condition_baseline_by_hand():
    algo = Reinforce(num_generations=1, minibatch_size=1, baseline="condition", min_count=2, standardize=False)
    keys = torch.tensor([0, 0, 1])
    adv, _, _ = algo.advantages(torch.tensor([1.0, 3.0, 10.0]), keys)
    # key 0 has 2 rewards (mean 2); key 1 has 1 < min_count: falls back to the batch mean (14/3)
    assert torch.allclose(adv, torch.tensor([-1.0, 1.0, 10.0 - 14 / 3]))
    adv, _, _ = algo.advantages(torch.tensor([4.0]), torch.tensor([0]))
    assert adv.item() == pytest.approx(4.0 - 8 / 3)  # running mean of 1, 3, 4


def test_condition_stats_round_trip():
    stats = ConditionStats(min_count=1)
    stats.update(torch.tensor([3, 3]), torch.tensor([1.0, float("nan")]))
    restored = ConditionStats()
    restored.load_state_dict(stats.state_dict())
    assert restored.count == {3: 1}
    assert torch.equal(*[s.mean_std(torch.tensor([3]), torch.tensor([0.0]))[0] for s in (stats, restored)])


def test_exact_and_k3_kl_agree_in_expectation_and_vanish_at_the_reference():
    torch.manual_seed(0)
    logp = torch.log_softmax(torch.randn(1, 1, 6), -1)
    ref = torch.log_softmax(torch.randn(1, 1, 6), -1)
    exact = exact_kl(logp, ref).item()
    draws = torch.multinomial(logp.exp()[0, 0], 200_000, replacement=True)
    k3 = k3_kl(logp[0, 0, draws], ref[0, 0, draws])
    assert k3.mean().item() == pytest.approx(exact, rel=0.03)
    assert (k3 >= 0).all() and exact > 0
    tokens = draws[:10].view(1, 10)
    same = logp.expand(1, 10, 6)
    assert token_kl("exact", same, same, tokens).abs().max() < 1e-6
    assert token_kl("k3", same, same, tokens).abs().max() < 1e-6


def test_ppo_and_reinforce_batch_advantages_by_hand():
    rewards = torch.tensor([1.0, 2.0, 3.0, 6.0])  # mean 3, unbiased std sqrt(14/3)
    expected = (rewards - 3.0) / (14 / 3) ** 0.5
    ppo_adv, _, _ = PPO(num_generations=2, minibatch_size=2, baseline="batch").advantages(rewards, torch.zeros(4))
    rf_adv, _, _ = Reinforce(num_generations=2, minibatch_size=2).advantages(rewards, torch.zeros(4))
    assert torch.allclose(ppo_adv, expected, atol=1e-6) and torch.allclose(rf_adv, expected, atol=1e-6)
    plain, _, _ = Reinforce(num_generations=2, minibatch_size=2, standardize=False).advantages(rewards, torch.zeros(4))
    assert torch.allclose(plain, rewards - 3.0)


def test_ppo_group_baseline_by_hand():
    rewards = torch.tensor([1.0, 3.0, 10.0, 10.0])  # group means 2 and 10 -> centered (-1, 1, 0, 0)
    adv, _, _ = PPO(num_generations=2, minibatch_size=2).advantages(rewards, torch.zeros(4))
    assert torch.allclose(adv, torch.tensor([-1.0, 1.0, 0.0, 0.0]) / rewards.std(), atol=1e-6)


def test_reinforce_leave_one_out_baseline_by_hand():
    # group 1 (1, 2, 6): baselines (2+6)/2=4, (1+6)/2=3.5, (1+2)/2=1.5 -> (-3, -1.5, 4.5)
    # group 2 (5, NaN, 9): the NaN is no sample: baselines 9 and 5 -> (-4, 0, 4)
    # group 3 (7, inf, NaN): one finite reward, no baseline -> 0
    rewards = torch.tensor([1.0, 2.0, 6.0, 5.0, math.nan, 9.0, 7.0, math.inf, math.nan])
    plain, _, stats = Reinforce(num_generations=3, minibatch_size=3, baseline="leave_one_out",
                                standardize=False).advantages(rewards, torch.zeros(9))
    assert torch.allclose(plain, torch.tensor([-3.0, -1.5, 4.5, -4.0, 0.0, 4.0, 0.0, 0.0, 0.0]))
    assert stats["reward/nonfinite_count"] == 3
    finite = torch.tensor([1.0, 2.0, 6.0, 5.0, 9.0, 7.0])
    scaled, _, _ = Reinforce(num_generations=3, minibatch_size=3, baseline="leave_one_out").advantages(
        rewards, torch.zeros(9))
    assert torch.allclose(scaled, plain / finite.std(), atol=1e-6)


def test_reinforce_leave_one_out_needs_two_generations():
    with pytest.raises(ValueError, match="num_generations>=2"):
        Reinforce(num_generations=1, minibatch_size=1, baseline="leave_one_out")


def test_sequence_level_ratio_by_hand():
    """GSPO: each sample's ratio is exp(mean log-ratio over its action tokens), clipped as one; the gradient of each
    token's log-prob is -A * ratio / (its sample's action tokens) / N under the token mean of equal lengths."""
    old = torch.zeros(2, 3)
    logp = torch.tensor([[0.3, -0.1, 0.0], [0.5, 0.5, 0.8]], requires_grad=True)
    mask = torch.tensor([[True, True, False], [True, True, False]])
    adv = torch.tensor([1.0, 1.0])
    loss, stats = clipped_surrogate(logp, old, adv, mask, 0.2, level="sequence")
    # sample 0: mean log-ratio 0.1 -> ratio e^0.1 (inside [0.8, 1.2]); sample 1: e^0.5 > 1.2, clipped, A > 0
    assert loss.item() == pytest.approx(-(math.exp(0.1) + 1.2) / 2, abs=1e-6)
    loss.backward()
    assert torch.allclose(logp.grad[0], torch.tensor([-1, -1, 0.0]) * math.exp(0.1) / 2 / 2, atol=1e-6)
    assert torch.equal(logp.grad[1], torch.zeros(3))  # clipped: no gradient
    assert stats["policy/clipfrac"] == 0.5
    # the diagnostics stay per token: a sequence's mean would hide how far single tokens moved
    token_kl = [math.exp(x) - 1 - x for x in (0.3, -0.1, 0.5, 0.5)]
    assert stats["policy/approx_kl"] == pytest.approx(sum(token_kl) / 4)
    assert stats["policy/ratio_max_abs_dev"] == pytest.approx(math.exp(0.5) - 1)
    with pytest.raises(ValueError, match="importance_sampling_level"):
        GRPO(importance_sampling_level="sample")


def test_grpo_takes_its_ratio_at_the_level_it_is_given():
    old = torch.zeros(2, 3)
    logp = torch.tensor([[0.3, -0.1, 0.0], [0.5, 0.5, 0.8]])
    mask, adv = torch.ones(2, 3, dtype=torch.bool), torch.tensor([1.0, -1.0])
    for level in ("token", "sequence"):
        loss, _ = GRPO(importance_sampling_level=level).loss(logp, old, adv, mask)
        assert loss.item() == pytest.approx(clipped_surrogate(logp, old, adv, mask, 0.2, level=level)[0].item())
    token, _ = GRPO().loss(logp, old, adv, mask)
    assert token.item() != pytest.approx(loss.item())  # the two levels differ here


def test_two_sided_clip_by_hand():
    """delta caps the unclipped ratio: a negative advantage's loss is bounded at -A * delta, with no gradient beyond."""
    old = torch.zeros(1, 2)
    logp = torch.tensor([[2.0, 0.1]], requires_grad=True)  # ratios e^2 = 7.39 (far out) and e^0.1 (inside)
    mask, adv = torch.ones(1, 2, dtype=torch.bool), torch.tensor([-1.0])
    plain, _ = clipped_surrogate(logp, old, adv, mask, 0.2)
    assert plain.item() == pytest.approx((math.exp(2.0) + math.exp(0.1)) / 2)
    capped, _ = clipped_surrogate(logp, old, adv, mask, 0.2, delta=3.0)
    assert capped.item() == pytest.approx((3.0 + math.exp(0.1)) / 2)
    capped.backward()
    assert logp.grad[0, 0] == 0.0 and logp.grad[0, 1] == pytest.approx(math.exp(0.1) / 2)
    assert GRPO(delta=3.0).loss(logp.detach(), old, adv, mask)[0].item() == pytest.approx(capped.item())


@pytest.mark.parametrize("kwargs,match", [({"delta": 1.2}, "algorithm.delta=1.2 caps the ratio above the clip range"),
                                          ({"delta": 1.25, "clip_eps_high": 0.28}, "> 1 \\+ clip_eps_high = 1.28"),
                                          ({"target_kl": 0.0}, "algorithm.target_kl must be > 0"),
                                          ({"target_kl": math.nan}, "algorithm.target_kl must be > 0"),
                                          ({"delta": math.nan}, "algorithm.delta=nan caps the ratio")])
def test_ratio_options_out_of_range_are_refused(kwargs, match):
    with pytest.raises(ValueError, match=match):
        GRPO(**kwargs)
    if "target_kl" in kwargs:
        with pytest.raises(ValueError, match=match):
            PPO(**kwargs)


def test_a_condition_window_follows_a_rising_reward():
    """With buffer_size, a condition's baseline is the mean and std of its last buffer_size rewards (DDPO's window):
    after rewards 1..6 under one key, a window of 3 keeps 4, 5, 6, so that a next reward of 10 is measured against
    5, 6, 10 (mean 7, std 2.65), where all of them give mean 31 / 7. The batch of six itself is measured against all
    six: a window narrower than a batch's rewards of one key widens for that batch."""
    windowed, everything = ConditionStats(min_count=2, buffer_size=3), ConditionStats(min_count=2)
    for stats in (windowed, everything):
        stats.update(torch.zeros(6, dtype=torch.long), torch.arange(1.0, 7.0))
        assert stats.mean_std(torch.tensor([0]), torch.tensor([0.0]))[0].item() == pytest.approx(3.5)
        stats.update(torch.tensor([0]), torch.tensor([math.nan]))  # no sample: the window keeps 4, 5, 6
    restored = ConditionStats(min_count=2, buffer_size=3)
    restored.load_state_dict(windowed.state_dict())
    for stats in (windowed, restored):
        stats.update(torch.tensor([0]), torch.tensor([10.0]))  # 5, 6, 10
        mean, std = stats.mean_std(torch.tensor([0]), torch.tensor([0.0]))
        assert (mean.item(), std.item()) == pytest.approx((7.0, 7**0.5))
    everything.update(torch.tensor([0]), torch.tensor([10.0]))
    assert everything.mean_std(torch.tensor([0]), torch.tensor([0.0]))[0].item() == pytest.approx(31 / 7)
    with pytest.raises(ValueError, match="buffer_size"):
        ConditionStats(min_count=2).load_state_dict(windowed.state_dict())
    with pytest.raises(ValueError, match="algorithm.buffer_size=4 keeps fewer rewards per condition"):
        Reinforce(baseline="condition", buffer_size=4, min_count=16)
    with pytest.raises(ValueError, match="set algorithm.baseline=condition"):
        Reinforce(buffer_size=16)


def test_a_kl_in_the_reward_is_refused_where_ties_would_be_standardized_on_it():
    with pytest.raises(ValueError, match="standardized on its KL alone"):
        Reinforce(baseline="condition", beta=0.05, kl_penalty="reward")
    Reinforce(baseline="condition", standardize=False, beta=0.05, kl_penalty="reward")  # a plain difference: kept
    Reinforce(baseline="leave_one_out", beta=0.05, kl_penalty="reward")
    with pytest.raises(ValueError, match="holds at least 1"):
        ConditionStats(min_count=1, buffer_size=0)


def test_a_batch_with_more_rewards_of_a_condition_than_its_window_is_in_its_own_baseline():
    """Three items of class 3 (G = 8) against DDPO's window of 16: the first item's two misses fell out of the window,
    whose last 16 rewards all tie at 1; measured against those alone they had std 0 and advantages of -1e8."""
    algorithm = Reinforce(baseline="condition", buffer_size=16, min_count=16, num_generations=8)
    rewards = torch.ones(24)
    rewards[[0, 3]] = 0.0
    adv, _, _ = algorithm.advantages(rewards, torch.full((24,), 3))
    expected = (rewards - rewards.mean()) / (rewards.std() + 1e-8)  # the batch's 24 rewards of the class
    assert torch.allclose(adv, expected) and adv.abs().max() < 5
    assert algorithm.tracker.state_dict()["recent"][3] == [1.0] * 16  # the window kept: the last 16
    with pytest.raises(ValueError, match="algorithm.min_count is the rewards a condition needs.*got 0"):
        Reinforce(baseline="condition", min_count=0)


def test_groups_keyed_by_condition_by_hand():
    """group_by=condition: the two items of class 0 (G = 2 each) form one group of four, class 1's item its own."""
    rewards = torch.tensor([1.0, 3.0, 5.0, 7.0, 2.0, 2.0])  # items: class 0, class 0, class 1
    keys = torch.tensor([0, 0, 0, 0, 1, 1])
    adv, _, stats = GRPO(num_generations=2, group_by="condition", adv_clip=None).advantages(rewards, keys)
    std = math.sqrt(((1 - 4) ** 2 + (3 - 4) ** 2 + (5 - 4) ** 2 + (7 - 4) ** 2) / 3)  # mean 4, unbiased
    expected = torch.tensor([-3 / std, -1 / std, 1 / std, 3 / std, 0.0, 0.0])
    assert torch.allclose(adv, expected)
    assert stats["adv/frac_zero_std"] == 0.5  # class 1's rewards tie
    by_item, _ = group_advantages(rewards, 2, eps=1e-8)
    assert torch.allclose(by_item, torch.tensor([-1, 1, -1, 1, 0, 0]) / math.sqrt(2))  # each item alone


def test_groups_keyed_by_condition_need_not_be_adjacent_or_equal_in_size():
    """Keys in any order, a NaN left out of its group's statistics, and zero-spread groups dropped by key."""
    rewards = torch.tensor([4.0, 10.0, float("nan"), 0.0, 9.0, 9.0])
    keys = torch.tensor([7, 3, 7, 7, 3, 5])  # class 7: rewards 4, 0 (and a NaN); class 3: 10, 9; class 5: 9
    algo = GRPO(num_generations=2, group_by="condition", adv_clip=None, scale="none", drop_zero_std_groups=True)
    adv, keep, stats = algo.advantages(rewards, keys)
    assert torch.allclose(adv, torch.tensor([2.0, 0.5, 0.0, -2.0, -0.5, 0.0]))
    assert keep.tolist() == [True, True, True, True, True, False]  # class 5 has one reward: no spread
    assert stats["reward/nonfinite_count"] == 1.0


def test_a_group_is_dropped_only_where_its_rewards_tie_in_their_own_precision():
    rewards = torch.tensor([1.0, 1.0 + 1e-10, 2.0, 2.0, 3.0, float("nan")], dtype=torch.float64)  # 1e-10: not in fp32
    _, keep, _ = GRPO(num_generations=2, drop_zero_std_groups=True).advantages(rewards, torch.arange(6))
    assert keep.tolist() == [True, True, False, False, False, False]


def test_std_eps_damps_a_near_tie():
    rewards = torch.tensor([1.0, 1.0 + 2e-4, 5.0, 7.0])  # a near-tie, then a spread of 2
    plain, _, _ = GRPO(num_generations=2).advantages(rewards, torch.arange(4))
    assert plain[:2].tolist() == pytest.approx([-1 / math.sqrt(2), 1 / math.sqrt(2)], rel=1e-2)  # full size
    damped, _, _ = GRPO(num_generations=2, std_eps=1e-4).advantages(rewards, torch.arange(4))
    tie_std, spread_std = 2e-4 / math.sqrt(2), 2 / math.sqrt(2)  # unbiased, groups of 2
    assert damped.tolist() == pytest.approx([-1e-4 / (tie_std + 1e-4), 1e-4 / (tie_std + 1e-4),
                                             -1 / (spread_std + 1e-4), 1 / (spread_std + 1e-4)], rel=1e-3)
    with pytest.raises(ValueError, match="std_eps must be > 0"):
        GRPO(std_eps=0.0)


def test_high_entropy_tokens_by_hand():
    entropy = torch.tensor([[0.1, 0.5, 0.9, 3.0], [0.3, 0.7, 2.0, 0.0]])
    mask = torch.tensor([[True, True, True, False], [True, True, True, True]])
    # the 7 action tokens' entropies 0, .1, .3, .5, .7, .9, 2: their 0.5 quantile (1 - 0.5) is .5
    kept = high_entropy_tokens(entropy, mask, 0.5)
    assert kept.tolist() == [[False, True, True, False], [False, True, True, False]]
    assert high_entropy_tokens(entropy, mask, 1.0).equal(mask)


def test_the_policy_loss_reads_only_high_entropy_tokens_and_keeps_its_denominator():
    """top_entropy_quantile: the low-entropy tokens' advantages are 0, the mean still divides by every action token
    (TRL's masking), and the entropy and KL terms are untouched."""
    torch.manual_seed(0)
    policy = GPT(vocab_size=16, block_size=8, num_classes=2, n_layer=1, n_head=2, n_embd=16)
    rollout = collect_rollout(policy.eval(), torch.randint(0, 16, (2, 8)), torch.tensor([0, 1]), 4,
                              compose_config([]).rollout, torch.Generator().manual_seed(0))
    rows, sampling = torch.arange(8), {"temperature": 1.0, "cfg_scale": 1.0}
    adv = torch.randn(8, generator=torch.Generator().manual_seed(1))
    algo = GRPO(num_generations=4, top_entropy_quantile=0.25, entropy_coef=0.01)
    loss, stats = minibatch_loss(policy.train(), algo, rollout, adv, rows, sampling, contextlib.nullcontext)
    with torch.no_grad():
        logp_all = torch.log_softmax(policy(rollout.context, rollout.labels).float(), -1)  # [8, T, V]
        logp = logp_all.gather(-1, rollout.tokens[..., None])[..., 0]
        entropy = -(logp_all.exp() * logp_all).sum(-1)
    kept = high_entropy_tokens(entropy, rollout.mask, 0.25)
    assert kept.sum() == 16  # a quarter of the 64 action tokens
    ratio = (logp - rollout.logprobs).exp()  # the first step's, ~1
    per_token = -adv[:, None] * ratio * kept  # unclipped at ratio ~1
    assert stats["loss/policy"] == pytest.approx(float(per_token.sum() / 64), rel=1e-4)
    assert stats["policy/entropy"] == pytest.approx(float(entropy.mean()), rel=1e-5)
    assert loss.item() == pytest.approx(stats["loss/policy"] - 0.01 * stats["policy/entropy"], rel=1e-5)


def test_reinforce_loss_takes_per_token_advantages():
    logp = torch.tensor([[-1.0, -2.0, -4.0], [-0.5, -1.5, -3.0]])
    mask = torch.tensor([[True, True, False], [True, True, True]])
    adv = torch.tensor([[2.0, 1.0, 9.0], [-1.0, 0.0, 3.0]])
    loss, _ = reinforce_loss(logp, adv, mask)
    # -mean(2 * -1 + 1 * -2, -1 * -0.5 + 0 + 3 * -3) = -mean(-4, -8.5) = 6.25
    assert loss.item() == pytest.approx(6.25)
    shared, _ = reinforce_loss(logp, torch.tensor([2.0, -1.0]), mask)
    expanded, _ = reinforce_loss(logp, torch.tensor([2.0, -1.0])[:, None].expand(2, 3), mask)
    assert shared.item() == pytest.approx(expanded.item())


@pytest.mark.parametrize("kwargs,match", [
    ({"sampler_correction_cap": 0.5}, "sampler_correction_cap must be >= 1"),
    ({"sampler_correction_cap": float("nan")}, "sampler_correction_cap must be >= 1"),
    ({"top_entropy_quantile": 0.0}, "top_entropy_quantile must be in"),
    ({"top_entropy_quantile": 1.5}, "top_entropy_quantile must be in"),
    ({"group_by": "prompt"}, "group_by must be one of"),
])
def test_token_weighting_options_out_of_range_are_refused(kwargs, match):
    with pytest.raises(ValueError, match=match):
        GRPO(**kwargs)
