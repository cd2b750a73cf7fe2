"""Issue-3 algorithm pieces against hand-derived numbers, and the ratio == 1 invariant."""

import pytest
import torch

from rlar.algorithm.algorithms import GRPO, PPO, Reinforce
from rlar.algorithm.gae import gae_terminal_reward
from rlar.algorithm.kl import exact_kl, k3_kl, token_kl
from rlar.algorithm.losses import aggregate, clipped_surrogate
from rlar.algorithm.stats import ConditionStats
from rlar.algorithm.update import policy_update
from rlar.config.schemas import compose_config
from rlar.policy.gpt import GPT
from rlar.policy.llamagen import LlamaGen
from rlar.rollout.collect import collect_rollout
from rlar.rollout.sampling import cfg_scales


def test_gae_by_hand():
    values = torch.tensor([[0.5, 0.25, 1.0]])
    mask = torch.ones(1, 3, dtype=torch.bool)
    adv, returns = gae_terminal_reward(values, torch.tensor([2.0]), mask, gamma=1.0, lam=0.5)
    # deltas: t2 = 2 - 1 = 1 ; t1 = 0 + 1 - 0.25 = 0.75 ; t0 = 0 + 0.25 - 0.5 = -0.25
    # A2 = 1 ; A1 = 0.75 + 0.5 * 1 = 1.25 ; A0 = -0.25 + 0.5 * 1.25 = 0.375
    assert torch.allclose(adv, torch.tensor([[0.375, 1.25, 1.0]]))
    assert torch.allclose(returns, adv + values)


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


MODES = [("autoregressive", []), ("prefix", ["rollout.prefix_len=5"]), ("teacher_forced", []),
         ("autoregressive", ["rollout.cfg_interval=[0.25,0.75]"])]


def tiny_policy(kind: str):
    torch.manual_seed(0)
    if kind == "llamagen":
        return LlamaGen(vocab_size=32, block_size=16, num_classes=4, n_layer=2, n_head=2, dim=32)
    return GPT(vocab_size=32, block_size=16, num_classes=4, n_layer=2, n_head=2, n_embd=32)


@pytest.mark.parametrize("mode,extra", MODES)
@pytest.mark.parametrize("algorithm", ["grpo", "ppo"])
@pytest.mark.parametrize("kind", ["gpt", "llamagen"])
def test_first_inner_epoch_ratio_is_one_with_cfg_and_temperature(kind, algorithm, mode, extra):
    cfg = compose_config([f"algorithm={algorithm}", f"rollout.mode={mode}", "rollout.cfg_scale=2.0",
                          "rollout.temperature=0.7", "algorithm.num_generations=4", "algorithm.minibatch_size=8",
                          *extra])
    policy = tiny_policy(kind)
    algo = PPO(num_generations=4, minibatch_size=8, epochs=2) if algorithm == "ppo" else GRPO(4, minibatch_size=8)
    gt = torch.randint(0, 32, (4, 16))
    labels = torch.tensor([0, 1, 2, 3])
    rollout = collect_rollout(policy.eval(), gt, labels, 4, cfg.rollout, torch.Generator().manual_seed(0))
    rewards = torch.randn(16)
    adv, _, _ = algo.advantages(rewards, labels.repeat_interleave(4))
    sampling = {"temperature": 0.7, "cfg_scale": cfg_scales(16, 2.0, cfg.rollout.cfg_interval)}
    optimizer = torch.optim.AdamW(policy.parameters(), lr=1e-2)
    stats = policy_update(policy, optimizer, algo, rollout, adv, sampling, 1.0, torch.Generator().manual_seed(0))
    assert stats["policy/ratio_max_abs_dev"] <= 1e-5
    assert stats["policy/minibatches"] == 2 * algo.epochs
    if algorithm == "ppo":
        assert stats["policy/approx_kl"] > 0  # later epochs move away from the rollout policy


def test_teacher_forced_rollout_reads_the_ground_truth_context():
    cfg = compose_config(["rollout.mode=teacher_forced"])
    policy = GPT(vocab_size=32, block_size=16, num_classes=4, n_layer=1, n_head=2, n_embd=16).eval()
    gt = torch.randint(0, 32, (2, 16))
    rollout = collect_rollout(policy, gt, torch.tensor([0, 1]), 3, cfg.rollout, torch.Generator().manual_seed(0))
    assert torch.equal(rollout.context, gt.repeat_interleave(3, 0))
    assert not torch.equal(rollout.tokens, rollout.context)
    assert rollout.mask.all()


def test_kl_term_and_value_head_train(tiny_policy_update_inputs):
    policy, ref, critic, rollout, adv, returns, algo = tiny_policy_update_inputs
    before = [p.detach().clone() for p in critic.parameters()]
    optimizer = torch.optim.AdamW(list(policy.parameters()) + list(critic.parameters()), lr=1e-2)
    stats = policy_update(policy, optimizer, algo, rollout, adv, {"temperature": 1.0, "cfg_scale": 1.0}, 1.0,
                          torch.Generator().manual_seed(0), ref_policy=ref, critic=critic, returns=returns)
    assert stats["loss/kl"] == pytest.approx(0.0, abs=1e-6)  # one minibatch, before its step: policy == reference
    assert "loss/value" in stats
    assert any(not torch.equal(a, b) for a, b in zip(before, critic.parameters(), strict=True))


@pytest.fixture
def tiny_policy_update_inputs():
    import copy

    from rlar.algorithm.update import value_advantages

    torch.manual_seed(0)
    policy = GPT(vocab_size=16, block_size=8, num_classes=2, n_layer=1, n_head=2, n_embd=16)
    ref = copy.deepcopy(policy).requires_grad_(False)
    critic = torch.nn.Linear(16, 1)
    cfg = compose_config([])
    rollout = collect_rollout(policy.eval(), torch.randint(0, 16, (2, 8)), torch.tensor([0, 1]), 4, cfg.rollout,
                              torch.Generator().manual_seed(0))
    algo = PPO(num_generations=4, minibatch_size=8, epochs=1, value_head=True, beta=0.1, kl_estimator="exact")
    rewards = torch.randn(8)
    adv, returns = value_advantages(policy, critic, algo, rollout, rewards, {"temperature": 1.0, "cfg_scale": 1.0})
    assert adv.shape == (8, 8)
    return policy, ref, critic, rollout, adv, returns, algo


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


def test_entropy_bonus_raises_entropy():
    entropies = {}
    for coef in (0.0, 1.0):
        torch.manual_seed(0)
        policy = GPT(vocab_size=16, block_size=8, num_classes=2, n_layer=1, n_head=2, n_embd=16)
        cfg = compose_config([])
        rollout = collect_rollout(policy.eval(), torch.randint(0, 16, (2, 8)), torch.tensor([0, 1]), 4, cfg.rollout,
                                  torch.Generator().manual_seed(0))
        algo = GRPO(num_generations=4, minibatch_size=8, entropy_coef=coef)
        optimizer = torch.optim.SGD(policy.parameters(), lr=0.5)
        sampling = {"temperature": 1.0, "cfg_scale": 1.0}
        for _ in range(5):  # zero advantages: only the bonus moves the policy
            stats = policy_update(policy, optimizer, algo, rollout, torch.zeros(8), sampling, None,
                                  torch.Generator().manual_seed(0))
        entropies[coef] = stats["policy/entropy"]
    assert entropies[1.0] > entropies[0.0] + 1e-3
