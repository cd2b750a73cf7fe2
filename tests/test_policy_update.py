"""policy_update on real rollouts: the first inner epoch's ratio is 1 (GPT and LlamaGen, GRPO and PPO, every rollout
mode, with CFG and temperature), the KL term and the value head train, the entropy bonus raises the entropy; and a
teacher-forced rollout reads the ground truth."""

import contextlib
import dataclasses
import math
from types import SimpleNamespace

import pytest
import torch

import rlar.loop
from rlar.algorithm import update as update_module
from rlar.algorithm.algorithms import GRPO, PPO, Reinforce
from rlar.algorithm.update import (
    MinibatchStats,
    clip_and_step,
    group_minibatches,
    policy_update,
    recomputes_old_logprobs,
    update_recomputes,
)
from rlar.config.store import compose_config
from rlar.loop import drop_nonfinite_draws
from rlar.policy.gpt import GPT
from rlar.policy.llamagen import LlamaGen
from rlar.rollout.collect import collect_rollout
from rlar.rollout.sampling import cfg_scales

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


def bf16_update(policy, mode: str, extra: list[str], recompute: bool) -> dict[str, float]:
    """One GRPO update under CPU bf16 autocast of a guided, tempered rollout of 4 items x 4 generations."""
    cfg = compose_config([f"rollout.mode={mode}", "rollout.cfg_scale=2.0", "rollout.temperature=0.7", *extra])
    sampling = {"temperature": 0.7, "cfg_scale": cfg_scales(16, 2.0, cfg.rollout.cfg_interval)}
    with torch.autocast("cpu", dtype=torch.bfloat16):
        rollout = collect_rollout(policy.eval(), torch.randint(0, 32, (4, 16), generator=torch.Generator()),
                                  torch.tensor([0, 1, 2, 3]), 4, cfg.rollout, torch.Generator().manual_seed(0))
    algo = GRPO(4, minibatch_size=8)
    adv, _, _ = algo.advantages(torch.randn(16, generator=torch.Generator().manual_seed(1)),
                                torch.arange(4).repeat_interleave(4))
    return policy_update(policy, torch.optim.AdamW(policy.parameters(), lr=1e-2), algo, rollout, adv, sampling, 1.0,
                         torch.Generator().manual_seed(0), lambda: torch.autocast("cpu", dtype=torch.bfloat16),
                         recompute=recompute)


@pytest.mark.parametrize("mode,extra", MODES)
@pytest.mark.parametrize("kind", ["gpt", "llamagen"])
def test_under_bf16_recomputed_old_logprobs_make_the_first_ratio_exactly_one(kind, mode, extra):
    stats = bf16_update(tiny_policy(kind), mode, extra, recompute=True)
    assert stats["policy/ratio_max_abs_dev"] == 0.0 and 0.0 <= stats["policy/sampler_logprob_dev"] < 0.1


def test_the_bf16_sampler_rounds_apart_from_the_update_which_recomputing_removes():
    """The KV-cached bf16 sampler and the update's bf16 teacher-forced pass round differently (here a GPT of width
    128): the sampler's log-probs put the first ratio off 1; recomputed, it is exactly 1, and the difference is
    reported as policy/sampler_logprob_dev."""
    stats = {}
    for recompute in (False, True):
        torch.manual_seed(0)
        policy = GPT(vocab_size=32, block_size=16, num_classes=4, n_layer=2, n_head=4, n_embd=128)
        stats[recompute] = bf16_update(policy, "autoregressive", [], recompute)
    assert 0.0 < stats[False]["policy/ratio_max_abs_dev"] < 0.1 and stats[True]["policy/ratio_max_abs_dev"] == 0.0
    assert 0.0 < stats[True]["policy/sampler_logprob_dev"] < 0.1 and "policy/sampler_logprob_dev" not in stats[False]


def test_the_old_logprobs_are_recomputed_under_bf16_unless_set():
    assert [recomputes_old_logprobs(setting, precision) for setting in ("auto", "sampler", "recompute")
            for precision in ("fp32", "bf16")] == [False, True, False, False, True, True]


def test_the_critic_reads_the_rollout_in_minibatches_with_the_same_values(monkeypatch):
    """GAE's values come from minibatches of algorithm.minibatch_size rows (never the whole rollout's logits at
    once): the same advantages and returns as one pass over all rows."""
    import rlar.algorithm.update
    from rlar.algorithm.update import value_advantages

    rows, recompute = [], rlar.algorithm.update.rollout_logprobs
    monkeypatch.setattr(rlar.algorithm.update, "rollout_logprobs",
                        lambda policy, context, *args, **kwargs: rows.append(len(context)) or recompute(
                            policy, context, *args, **kwargs))
    torch.manual_seed(0)
    policy, critic = GPT(vocab_size=16, block_size=8, num_classes=2, n_layer=1, n_head=2, n_embd=16), torch.nn.Linear(
        16, 1)
    rollout = collect_rollout(policy.eval(), torch.randint(0, 16, (4, 8)), torch.tensor([0, 1, 0, 1]), 4,
                              compose_config([]).rollout, torch.Generator().manual_seed(0))
    rewards = torch.randn(16, generator=torch.Generator().manual_seed(1))
    sampling = {"temperature": 1.0, "cfg_scale": 1.0}
    whole, in_four = (value_advantages(policy, critic, PPO(num_generations=4, minibatch_size=size, value_head=True),
                                       rollout, rewards, sampling) for size in (16, 4))
    assert rows == [16, 4, 4, 4, 4]
    torch.testing.assert_close(in_four[0], whole[0])
    torch.testing.assert_close(in_four[1], whole[1])


@pytest.mark.parametrize("top_k, top_p", [(None, None), (5, None), (None, 0.8)])
def test_teacher_forced_draws_read_each_cdf_once_and_draw_what_g_copies_would(top_k, top_p):
    """G draws per position from one CDF (the logits are not copied G times): the tokens, log-probs and the
    generator's state after are those of drawing from G adjacent copies of each row."""
    from rlar.rollout.draws import categorical
    from rlar.rollout.sampling import policy_logprobs, truncate

    cfg = compose_config(["rollout.mode=teacher_forced", "rollout.temperature=0.7", f"rollout.top_k={top_k or 'null'}",
                          f"rollout.top_p={top_p or 'null'}"])
    policy = tiny_policy("gpt").eval()
    gt, labels = torch.randint(0, 32, (3, 16), generator=torch.Generator().manual_seed(2)), torch.tensor([0, 1, 2])
    drawn_with = torch.Generator().manual_seed(0)
    rollout = collect_rollout(policy, gt, labels, 4, cfg.rollout, drawn_with)
    copied_with = torch.Generator().manual_seed(0)
    with torch.no_grad():
        logp = policy_logprobs(policy, gt, labels, 0.7, 1.0)[0].repeat_interleave(4, 0)  # [12, 16, V]: G copies
    actions = categorical(truncate(logp.flatten(0, 1), top_k, top_p).exp(), copied_with).view(12, 16)
    assert torch.equal(rollout.tokens, actions)
    assert torch.equal(rollout.logprobs, logp.gather(-1, actions[..., None])[..., 0])
    assert torch.equal(drawn_with.get_state(), copied_with.get_state())


def two_items_of_four(algo):
    """``(policy, rollout, advantages [8])``: a small GPT (seed 0), a rollout of 4 samples for each of 2 items and
    ``algo``'s advantages of fixed random rewards, the same for every call."""
    torch.manual_seed(0)
    policy = GPT(vocab_size=16, block_size=8, num_classes=2, n_layer=1, n_head=2, n_embd=16)
    rollout = collect_rollout(policy.eval(), torch.randint(0, 16, (2, 8)), torch.tensor([0, 1]), 4,
                              compose_config([]).rollout, torch.Generator().manual_seed(0))
    adv, _, _ = algo.advantages(torch.randn(8, generator=torch.Generator().manual_seed(1)),
                                torch.tensor([0] * 4 + [1] * 4))
    return policy, rollout, adv


def test_a_partial_accumulation_window_steps_on_the_mean_gradient():
    """Two minibatches under grad_accum=4 (a recipe for fewer processes run on more) take the step two accumulated
    minibatches take: the mean of their gradients, not half of it; the logged gradient norm is that step's."""
    from rlar.algorithm.update import accumulation_window

    assert [accumulation_window(c, 10, 4) for c in range(1, 11)] == [4] * 8 + [2, 2]
    assert [accumulation_window(c, 2, 16) for c in (1, 2)] == [2, 2]
    weights, norms = {}, {}
    for accum in (2, 4):
        algo = GRPO(num_generations=4, minibatch_size=4, grad_accum=accum)
        policy, rollout, adv = two_items_of_four(algo)
        stats = policy_update(policy, torch.optim.SGD(policy.parameters(), lr=0.5), algo, rollout, adv,
                              {"temperature": 1.0, "cfg_scale": 1.0}, None, torch.Generator().manual_seed(0))
        assert stats["policy/minibatches"] == 2
        weights[accum], norms[accum] = policy.state_dict(), stats["policy/grad_norm"]
    assert all(torch.allclose(weights[4][k], weights[2][k], atol=1e-7) for k in weights[2])
    assert norms[4] == pytest.approx(norms[2], rel=1e-6) and norms[2] > 0  # one step each, of the same gradient


def test_every_sample_of_a_step_counts_alike_whatever_its_minibatch():
    """Rows left out of the update (an unscored sample) do not make the other rows of their minibatch weigh more: two
    accumulated minibatches, one of which lost two of its four rows (or all four, with a next-token term), take the
    step of one minibatch of all the rows; a REINFORCE rollout of three items in minibatches of two and one takes the
    step of one minibatch of three. Rows drawn from non-finite logits, which the update's passes leave out, weigh as
    masked rows do."""
    from rlar.algorithm.algorithms import Reinforce

    def step(algo, items=2, masked=(), left_out=False):
        torch.manual_seed(0)
        policy = GPT(vocab_size=16, block_size=8, num_classes=2, n_layer=1, n_head=2, n_embd=16)
        rollout = collect_rollout(policy.eval(), torch.randint(0, 16, (items, 8)), torch.arange(items) % 2, 4,
                                  compose_config([]).rollout, torch.Generator().manual_seed(0))
        kept = torch.ones(4 * items, dtype=torch.bool)
        kept[list(masked)] = False
        rollout.mask = rollout.mask & kept[:, None]  # as the loop leaves unscored rows out
        rollout.nonfinite = ~kept if left_out else None
        adv, _, _ = algo.advantages(torch.randn(4 * items, generator=torch.Generator().manual_seed(1)),
                                    torch.arange(items).repeat_interleave(4))
        torch.manual_seed(1)  # a reference other than the policy: the KL term has a gradient at the first step
        reference = GPT(vocab_size=16, block_size=8, num_classes=2, n_layer=1, n_head=2, n_embd=16).eval()
        policy_update(policy, torch.optim.SGD(policy.parameters(), lr=0.5), algo, rollout, adv,
                      {"temperature": 1.0, "cfg_scale": 1.0}, None, torch.Generator().manual_seed(0),
                      ref_policy=reference.requires_grad_(False) if algo.beta else None)
        return policy.state_dict()

    def same(a, b):
        return all(torch.allclose(a[k], b[k], atol=1e-6) for k in a)

    accumulated = step(GRPO(num_generations=4, minibatch_size=4, grad_accum=2), masked=(0, 1))
    assert same(accumulated, step(GRPO(num_generations=4, minibatch_size=8), masked=(0, 1)))
    assert not same(accumulated, step(GRPO(num_generations=4, minibatch_size=8)))  # the masked rows mattered
    # the entropy and KL terms, and the surrogate under each aggregation, weigh their scored rows alike too
    for options in ({"beta": 0.5, "entropy_coef": 0.5, "kl_estimator": "exact"}, {"aggregation": "sequence"},
                    {"aggregation": "constant"}):
        assert same(step(GRPO(num_generations=4, minibatch_size=4, grad_accum=2, **options), masked=(0, 1)),
                    step(GRPO(num_generations=4, minibatch_size=8, **options), masked=(0, 1)))
    # the next-token term is a mean over every row, scored or not: a minibatch of unscored rows still counts for it
    with_ntp = step(GRPO(num_generations=4, minibatch_size=4, grad_accum=2, ntp_weight=0.5), masked=range(4))
    assert same(with_ntp, step(GRPO(num_generations=4, minibatch_size=8, ntp_weight=0.5), masked=range(4)))
    in_two = step(Reinforce(num_generations=4, minibatch_size=8), items=3)
    assert same(in_two, step(Reinforce(num_generations=4, minibatch_size=12), items=3))
    for algo in (GRPO(num_generations=4, minibatch_size=8, aggregation="constant"),
                 GRPO(num_generations=4, minibatch_size=4, grad_accum=2, aggregation="constant"),
                 GRPO(num_generations=4, minibatch_size=8), Reinforce(num_generations=4, minibatch_size=8)):
        assert same(step(algo, masked=(0, 5), left_out=True), step(algo, masked=(0, 5)))


def test_minibatch_weights_by_hand():
    from rlar.algorithm.update import minibatch_weights

    mask = torch.ones(12, 3, dtype=torch.bool)
    mask[[0, 1]] = False  # two rows of the first minibatch have no action
    minibatches = [torch.arange(0, 4), torch.arange(4, 8), torch.arange(8, 12)]
    # one step per two minibatches: scored rows (2, 4 | 4) -> 2*2/6, 4*2/6 | 1; rows (4, 4 | 4) -> 1
    assert torch.tensor(minibatch_weights(mask, minibatches, 2)).allclose(
        torch.tensor([(2 / 3, 1.0), (4 / 3, 1.0), (1.0, 1.0)]))
    assert minibatch_weights(torch.ones(12, 3, dtype=torch.bool), minibatches, 3) == [(1.0, 1.0)] * 3  # exactly
    # a last, smaller minibatch in one step: rows (8 | 4) -> 8*2/12, 4*2/12
    assert torch.tensor(minibatch_weights(mask, [torch.arange(0, 8), torch.arange(8, 12)], 2)).allclose(
        torch.tensor([(6 * 2 / 10, 4 / 3), (4 * 2 / 10, 2 / 3)]))
    # the update runs 3 of the first minibatch's 4 rows: its rows weigh 3/4 of their share, as if one added nothing
    assert torch.tensor(minibatch_weights(mask, minibatches, 3, [torch.arange(1, 4), *minibatches[1:]])).allclose(
        torch.tensor([(2 * 3 / 10, 3 / 4), (4 * 3 / 10, 1.0), (4 * 3 / 10, 1.0)]))
    assert minibatch_weights(mask, [], 1) == []


def test_a_gradient_that_is_not_finite_is_not_stepped(caplog):
    """A NaN or infinite gradient (an lr far too large, a temperature near 0) leaves the weights and the optimizer's
    state as they were, with a warning; a finite one steps."""
    layer = torch.nn.Linear(3, 1)
    optimizer = torch.optim.AdamW(layer.parameters(), lr=0.1)
    before = [p.detach().clone() for p in layer.parameters()]
    for bad in (float("nan"), float("inf")):
        (layer(torch.ones(1, 3)).sum() * bad).backward()
        with caplog.at_level("WARNING", logger="rlar.algorithm.update"):
            norm = clip_and_step(list(layer.parameters()), optimizer, None)
        assert not math.isfinite(norm) and "this optimizer step is skipped" in caplog.text
        assert all(torch.equal(p, b) for p, b in zip(layer.parameters(), before, strict=True))
        assert not optimizer.state and all(p.grad is None for p in layer.parameters())
    layer(torch.ones(1, 3)).sum().backward()
    assert math.isfinite(clip_and_step(list(layer.parameters()), optimizer, 1.0))
    assert not torch.equal(layer.weight, before[0]) and optimizer.state


def test_reinforce_steps_once_per_rollout_on_the_mean_gradient_of_its_minibatches():
    """REINFORCE has no ratio: a second optimizer step on the same rollout would train on an older policy's samples.
    Two minibatches take one step, the one a single minibatch of all the rollout takes."""
    from rlar.algorithm.algorithms import Reinforce

    weights, steps = {}, {}
    for minibatch in (4, 8):
        algo = Reinforce(num_generations=4, minibatch_size=minibatch)
        policy, rollout, adv = two_items_of_four(algo)
        optimizer = torch.optim.SGD(policy.parameters(), lr=0.5)
        calls = []
        optimizer.register_step_post_hook(lambda *_, calls=calls: calls.append(1))
        stats = policy_update(policy, optimizer, algo, rollout, adv, {"temperature": 1.0, "cfg_scale": 1.0}, None,
                              torch.Generator().manual_seed(0))
        weights[minibatch], steps[minibatch] = policy.state_dict(), len(calls)
        assert stats["policy/minibatches"] == 8 // minibatch
    assert steps == {4: 1, 8: 1}
    assert all(torch.allclose(weights[4][k], weights[8][k], atol=1e-6) for k in weights[8])


def test_the_loss_adds_each_term_with_its_sign_and_weight():
    """``minibatch_loss`` = surrogate + beta * KL - entropy_coef * entropy + ntp_weight * next-token CE (+ vf_coef *
    value loss for PPO's critic): each term as logged, a bonus for entropy, a penalty for the KL."""
    from rlar.algorithm.update import minibatch_loss

    torch.manual_seed(0)
    policy = GPT(vocab_size=16, block_size=8, num_classes=2, n_layer=1, n_head=2, n_embd=16)
    reference = GPT(vocab_size=16, block_size=8, num_classes=2, n_layer=1, n_head=2, n_embd=16)  # another prior
    rollout = collect_rollout(policy.eval(), torch.randint(0, 16, (2, 8)), torch.tensor([0, 1]), 4,
                              compose_config([]).rollout, torch.Generator().manual_seed(0))
    rows, sampling = torch.arange(8), {"temperature": 1.0, "cfg_scale": 1.0}
    adv = torch.randn(8, generator=torch.Generator().manual_seed(1))
    algo = GRPO(num_generations=4, beta=0.3, entropy_coef=0.05, ntp_weight=0.2)
    loss, stats = minibatch_loss(policy.train(), algo, rollout, adv, rows, sampling, contextlib.nullcontext, reference)
    assert stats["loss/kl"] > 0 and stats["policy/entropy"] > 0 and stats["loss/ntp"] > 0
    assert loss.item() == pytest.approx(stats["loss/policy"] + 0.3 * stats["loss/kl"] - 0.05 * stats["policy/entropy"]
                                        + 0.2 * stats["loss/ntp"], rel=1e-5)
    critic = torch.nn.Linear(16, 1)
    ppo = PPO(num_generations=4, value_head=True, vf_coef=0.7)
    returns = torch.randn(8, 8, generator=torch.Generator().manual_seed(2))
    per_token = adv[:, None].expand(8, 8)  # [N, T]: PPO's advantages
    loss, stats = minibatch_loss(policy, ppo, rollout, per_token, rows, sampling, contextlib.nullcontext, None, critic,
                                 returns)
    assert stats["loss/value"] > 0
    assert loss.item() == pytest.approx(stats["loss/policy"] + 0.7 * stats["loss/value"], rel=1e-5)


def test_value_clip_by_hand():
    from rlar.algorithm.update import value_error

    rollout = SimpleNamespace(values=torch.tensor([[1.0, 1.0, 0.0]]))  # [1, 3] rollout-time values
    values = torch.tensor([[2.0, 0.5, 0.0]])  # moved +1, -0.5, 0
    returns = torch.tensor([[3.0, 0.0, 4.0]])
    mask = torch.tensor([[True, True, False]])
    plain, _ = value_error(values, returns, rollout, torch.tensor([0]), mask, None)
    assert plain.item() == pytest.approx(0.5 * (1.0 + 0.25) / 2)
    # clip 0.2: token 0 kept at 1.2 -> error 3.24 > 1; token 1 at 0.8 -> 0.64 > 0.25; token 2 is no action
    clipped, stats = value_error(values, returns, rollout, torch.tensor([0]), mask, 0.2)
    assert clipped.item() == pytest.approx(0.5 * (3.24 + 0.64) / 2)
    assert stats["policy/value_clipfrac"] == 1.0
    # a value moved less than the clip, or toward a larger error when clipped, keeps the plain error
    wide, stats = value_error(values, returns, rollout, torch.tensor([0]), mask, 2.0)
    assert wide.item() == pytest.approx(plain.item()) and stats["policy/value_clipfrac"] == 0.0


def test_value_clip_reads_the_values_of_the_rollout(tiny_policy_update_inputs):
    policy, ref, critic, rollout, adv, returns, algo = tiny_policy_update_inputs
    assert rollout.values.shape == (8, 8)
    algo = PPO(num_generations=4, minibatch_size=4, epochs=2, value_head=True, value_clip=1e-6)
    optimizer = torch.optim.SGD(critic.parameters(), lr=1.0)
    stats = policy_update(policy, optimizer, algo, rollout, adv, {"temperature": 1.0, "cfg_scale": 1.0}, None,
                          torch.Generator().manual_seed(0), critic=critic, returns=returns)
    assert 0.0 < stats["policy/value_clipfrac"] < 1.0  # the first minibatch is unmoved, later ones moved
    with pytest.raises(ValueError, match="value_advantages"):
        policy_update(policy, optimizer, algo, dataclasses.replace(rollout, values=None), adv,
                      {"temperature": 1.0, "cfg_scale": 1.0}, None, torch.Generator().manual_seed(0), critic=critic,
                      returns=returns)


@pytest.mark.parametrize("kwargs", [{"value_clip": 0.0, "value_head": True},
                                    {"value_clip": math.nan, "value_head": True}, {"value_clip": 0.2}])
def test_value_clip_is_refused_without_a_critic_or_at_zero(kwargs):
    with pytest.raises(ValueError, match="value_clip"):
        PPO(**kwargs)


def test_target_kl_skips_the_step_that_exceeds_it_and_ends_the_update():
    """With target_kl, the optimizer step whose minibatches measured a larger mean approx_kl is not taken and the
    update ends: the first step measures 0 (the rollout's own policy) and is taken, the second measures the KL of one
    step at lr 0.5 (far above 1e-6) and is not. The weights are those of the first step alone."""
    def update(target, accum=1, epochs=4):
        algo = PPO(num_generations=4, minibatch_size=4, epochs=epochs, grad_accum=accum, target_kl=target)
        policy, rollout, adv = two_items_of_four(algo)
        optimizer, steps = torch.optim.SGD(policy.parameters(), lr=0.5), []
        optimizer.register_step_post_hook(lambda *_: steps.append(1))
        stats = policy_update(policy, optimizer, algo, rollout, adv, {"temperature": 1.0, "cfg_scale": 1.0}, None,
                              torch.Generator().manual_seed(0))
        return stats, len(steps), policy.state_dict()

    (off, off_steps, _), (on, on_steps, stopped), (high, high_steps, _) = (update(t) for t in (None, 1e-6, 1e6))
    assert (off["policy/minibatches"], off_steps) == (8, 8) and "policy/kl_stopped" not in off
    assert (on["policy/minibatches"], on_steps, on["policy/kl_stopped"]) == (2, 1, 1.0)
    assert (high["policy/minibatches"], high_steps, high["policy/kl_stopped"]) == (8, 8, 0.0)
    from rlar.algorithm.update import group_minibatches, minibatch_loss

    algo = PPO(num_generations=4, minibatch_size=4)
    policy, rollout, adv = two_items_of_four(algo)  # the first step by hand: the first minibatch's loss, one SGD step
    first = next(group_minibatches(8, 4, 4, torch.Generator().manual_seed(0)))
    loss, _ = minibatch_loss(policy.train(), algo, rollout, adv, first, {"temperature": 1.0, "cfg_scale": 1.0},
                             contextlib.nullcontext)
    loss.backward()
    torch.optim.SGD(policy.parameters(), lr=0.5).step()
    assert all(torch.allclose(policy.state_dict()[k], stopped[k], atol=1e-7) for k in stopped)
    accumulated, steps, _ = update(1e-6, accum=2)  # steps of two minibatches: the first taken, the second not
    assert (accumulated["policy/minibatches"], steps, accumulated["policy/kl_stopped"]) == (4, 1, 1.0)


def test_target_kl_always_takes_the_first_step():
    """Old log-probs that differ from the update's (the sampler's rounding under bf16, here 0.1 added) make the first
    step measure a KL above a tiny target_kl: it is still taken, as it measures the rollout's own policy."""
    algo = PPO(num_generations=4, minibatch_size=4, epochs=2, target_kl=1e-9)
    policy, rollout, adv = two_items_of_four(algo)
    rollout = dataclasses.replace(rollout, logprobs=torch.where(rollout.mask, rollout.logprobs + 0.1, 0.0))
    optimizer, steps = torch.optim.SGD(policy.parameters(), lr=0.5), []
    optimizer.register_step_post_hook(lambda *_: steps.append(1))
    stats = policy_update(policy, optimizer, algo, rollout, adv, {"temperature": 1.0, "cfg_scale": 1.0}, None,
                          torch.Generator().manual_seed(0))
    assert len(steps) == 1 and stats["policy/minibatches"] == 2 and stats["policy/kl_stopped"] == 1.0


def test_a_steps_kl_is_the_mean_over_its_scored_rows():
    """A minibatch with no scored row measures approx_kl 0 and weighs 0: it does not pull the step's mean down."""
    from rlar.algorithm.update import step_kl

    assert step_kl([0.024, 0.0], [1.0, 0.0], "cpu") == pytest.approx(0.024)
    assert step_kl([0.01, 0.04], [0.5, 1.5], "cpu") == pytest.approx((0.005 + 0.06) / 2)
    assert step_kl([0.0], [0.0], "cpu") == 0.0


def test_reward_kl_is_each_actions_log_ratio_to_the_prior():
    """kl_penalty=reward: each action's sampler log-prob minus the prior's (the prior's read off its own logits
    here), 0 off the actions; 0 for the policy against itself, up to the sampler's rounding."""
    from rlar.algorithm.update import reward_kl

    torch.manual_seed(0)
    policy = GPT(vocab_size=16, block_size=8, num_classes=2, n_layer=1, n_head=2, n_embd=16).eval()
    prior = GPT(vocab_size=16, block_size=8, num_classes=2, n_layer=1, n_head=2, n_embd=16).eval()
    rollout = collect_rollout(policy, torch.randint(0, 16, (2, 8)), torch.tensor([0, 1]), 4,
                              compose_config(["rollout.mode=prefix", "rollout.prefix_len=3"]).rollout,
                              torch.Generator().manual_seed(0))
    sampling = {"temperature": 1.0, "cfg_scale": 1.0}
    with torch.no_grad():
        prior_logp = torch.log_softmax(prior(rollout.context, rollout.labels).float(), -1)  # [8, 8, 16]
    by_hand = (rollout.logprobs - prior_logp.gather(-1, rollout.tokens[..., None])[..., 0]) * rollout.mask  # [8, 8]
    kl = reward_kl(prior, rollout, sampling, contextlib.nullcontext, 4)
    assert torch.allclose(kl, by_hand, atol=1e-5) and kl.sum(1).abs().min() > 1e-3
    assert reward_kl(policy, rollout, sampling, contextlib.nullcontext, 4).abs().max() < 1e-4
    assert not rollout.mask[:, :3].any()  # the given prefix is no action: it adds nothing
    teacher_forced = reward_kl(prior, rollout, sampling, contextlib.nullcontext, 4, policy=policy)  # the update's pass
    assert torch.allclose(teacher_forced, kl, atol=1e-4)
    for mode in ("teacher_forced", "autoregressive"):  # guided and tempered: both sides under the same sampling
        cfg = compose_config([f"rollout.mode={mode}", "rollout.cfg_scale=2.0", "rollout.temperature=0.7"])
        guided = {"temperature": 0.7, "cfg_scale": cfg_scales(8, 2.0, cfg.rollout.cfg_interval)}
        rollout = collect_rollout(policy, torch.randint(0, 16, (2, 8)), torch.tensor([0, 1]), 4, cfg.rollout,
                                  torch.Generator().manual_seed(0))
        assert reward_kl(policy, rollout, guided, contextlib.nullcontext, 4).abs().max() < 1e-4
        assert reward_kl(policy, rollout, sampling, contextlib.nullcontext, 4).abs().max() > 1e-2  # not the same


def test_the_kl_in_the_reward_lessens_each_reward_before_the_advantages():
    """loop.advantages with kl_penalty=reward: the advantages are the algorithm's of ``reward - beta * kl`` over the
    batch, and ``objective/kl`` is the mean of ``kl``."""
    from rlar import loop
    from rlar.algorithm.algorithms import Reinforce
    from rlar.algorithm.update import reward_kl

    torch.manual_seed(0)
    policy = GPT(vocab_size=16, block_size=8, num_classes=2, n_layer=1, n_head=2, n_embd=16).eval()
    prior = GPT(vocab_size=16, block_size=8, num_classes=2, n_layer=1, n_head=2, n_embd=16).eval()
    rollout = collect_rollout(policy, torch.randint(0, 16, (2, 8)), torch.tensor([0, 1]), 4,
                              compose_config([]).rollout, torch.Generator().manual_seed(0))
    sampling = {"temperature": 1.0, "cfg_scale": 1.0}
    kl = reward_kl(prior, rollout, sampling, contextlib.nullcontext, 8).sum(1)  # [8]: each sample's

    def algorithm():
        return Reinforce(num_generations=4, minibatch_size=8, baseline="leave_one_out", beta=0.5, kl_penalty="reward")

    run = SimpleNamespace(algorithm=algorithm(), ref_policy=prior, policy=policy, sampling=sampling, critic=None,
                          hw=SimpleNamespace(autocast=contextlib.nullcontext, precision="fp32"), device="cpu")
    rewards, keys = torch.randn(8, generator=torch.Generator().manual_seed(1)), torch.tensor([0, 1])
    adv, _, valid, stats = loop.advantages(run, rollout, rewards, rewards.clone(), keys, keys)
    expected, _, _ = algorithm().advantages(rewards - 0.5 * kl, keys.repeat_interleave(4))
    assert torch.allclose(adv, expected, atol=1e-6) and valid.all()
    assert not torch.allclose(adv, algorithm().advantages(rewards, keys.repeat_interleave(4))[0], atol=1e-3)
    assert stats["objective/kl"] == pytest.approx(kl.mean().item(), rel=1e-5)


@pytest.mark.parametrize("make", [lambda: GRPO(num_generations=4, minibatch_size=8, sampler_correction_cap=2.0),
                                  lambda: Reinforce(num_generations=4, minibatch_size=8, sampler_correction_cap=2.0)],
                         ids=["grpo", "reinforce"])
def test_the_sampler_correction_weighs_each_tokens_loss_by_its_capped_ratio(make):
    """With recomputed old log-probs, each action token's loss is weighted by min(pi_update / pi_sampler, 2): the
    step equals the uncorrected step on advantages times those weights, worked out by hand from a sampler put off
    the update's pass by log 1.5 (weight 1.5) and log 3 (capped at 2)."""
    algo = make()
    policy, rollout, adv = two_items_of_four(algo)
    sampler = rollout.logprobs.clone()
    sampler[0, 1] -= math.log(1.5)  # the update's pass gives this token 1.5 x the sampler's probability
    sampler[3, 2] -= math.log(3.0)  # 3 x: capped at 2
    sampler[5, 4] += math.log(2.0)  # half
    expected = torch.ones_like(sampler)
    expected[0, 1], expected[3, 2], expected[5, 4] = 1.5, 2.0, 0.5
    start = {k: v.clone() for k, v in policy.state_dict().items()}
    sampling = {"temperature": 1.0, "cfg_scale": 1.0}
    corrected = policy_update(policy, torch.optim.SGD(policy.parameters(), lr=0.5), algo,
                              dataclasses.replace(rollout, logprobs=sampler), adv, sampling, None,
                              torch.Generator().manual_seed(0), recompute=True)
    stepped = {k: v.clone() for k, v in policy.state_dict().items()}
    policy.load_state_dict(start)
    plain = dataclasses.replace(algo, sampler_correction_cap=None)
    weighted_adv = adv[:, None] * expected  # [8, T]
    by_hand = policy_update(policy, torch.optim.SGD(policy.parameters(), lr=0.5), plain, rollout, weighted_adv,
                            sampling, None, torch.Generator().manual_seed(0), recompute=True)
    assert all(torch.allclose(stepped[k], policy.state_dict()[k], atol=1e-6) for k in stepped)
    assert not all(torch.allclose(stepped[k], start[k]) for k in stepped)
    assert corrected["policy/sampler_correction"] == pytest.approx(float(expected[rollout.mask].mean()), rel=1e-4)
    assert corrected["policy/sampler_correction_capped"] == pytest.approx(1 / int(rollout.mask.sum()))
    assert "policy/sampler_correction" not in by_hand


def test_a_detached_critic_trains_itself_and_leaves_the_trunk_to_the_policy_loss(tiny_policy_update_inputs):
    """value_detach: the policy's gradient is that of the loss without the value term, however large vf_coef; the
    critic still learns. Attached (the default), the value loss reaches the trunk."""
    from rlar.algorithm.update import minibatch_loss

    policy, _, critic, rollout, adv, returns, _ = tiny_policy_update_inputs
    sampling, rows = {"temperature": 1.0, "cfg_scale": 1.0}, torch.arange(8)

    def gradients(**kwargs):
        policy.zero_grad(), critic.zero_grad()
        algo = PPO(num_generations=4, minibatch_size=8, value_head=True, **kwargs)
        loss, _ = minibatch_loss(policy.train(), algo, rollout, adv, rows, sampling, contextlib.nullcontext, None,
                                 critic, returns)
        loss.backward()
        return [p.grad.clone() for p in policy.parameters()], critic.weight.grad.clone()

    policy_only, _ = gradients(vf_coef=0.0)
    detached, critic_grad = gradients(vf_coef=100.0, value_detach=True)
    attached, _ = gradients(vf_coef=100.0)
    assert all(torch.allclose(a, b, atol=1e-7) for a, b in zip(detached, policy_only, strict=True))
    assert critic_grad.abs().sum() > 0
    assert not all(torch.allclose(a, b, atol=1e-4) for a, b in zip(attached, policy_only, strict=True))
    with pytest.raises(ValueError, match="value_detach=true detaches the value head's input"):
        PPO(value_detach=True)


def test_the_kl_in_the_reward_and_the_update_share_the_policys_teacher_forced_pass(monkeypatch):
    """Under bf16 with kl_penalty=reward, the policy's teacher-forced pass that the reward's KL reads is the one the
    update's ratio reads as its old log-probs: one pass per iteration, not two, and the same numbers (0 on the rows
    left out of the update since)."""
    import rlar.algorithm.update
    from rlar import loop

    passes, recompute = [], rlar.algorithm.update.recomputed_logprobs
    monkeypatch.setattr(rlar.algorithm.update, "recomputed_logprobs",
                        lambda model, *args: passes.append(model) or recompute(model, *args))
    torch.manual_seed(0)
    policy = GPT(vocab_size=16, block_size=8, num_classes=2, n_layer=1, n_head=2, n_embd=64).eval()
    prior = GPT(vocab_size=16, block_size=8, num_classes=2, n_layer=1, n_head=2, n_embd=64).eval()
    bf16 = lambda: torch.autocast("cpu", dtype=torch.bfloat16)  # noqa: E731
    sampling = {"temperature": 1.0, "cfg_scale": 1.0}
    with bf16():
        rollout = collect_rollout(policy, torch.randint(0, 16, (2, 8)), torch.tensor([0, 1]), 4,
                                  compose_config([]).rollout, torch.Generator().manual_seed(0))
    algo = Reinforce(num_generations=4, minibatch_size=8, baseline="leave_one_out", beta=0.5, kl_penalty="reward")
    run = SimpleNamespace(algorithm=algo, ref_policy=prior, policy=policy, sampling=sampling, critic=None,
                          hw=SimpleNamespace(autocast=bf16, precision="bf16"), device="cpu")
    rewards = torch.randn(8, generator=torch.Generator().manual_seed(1))
    rewards[5] = float("nan")  # a row the update leaves out
    keys = torch.tensor([0, 1])
    adv, _, valid, _ = loop.advantages(run, rollout, rewards, rewards.clone(), keys, keys)
    assert passes == [prior, policy] and not valid[5]
    fresh = recompute(policy, rollout, sampling, bf16, 8)  # what the update would compute itself, on these weights
    assert torch.equal(torch.where(rollout.mask, rollout.update_logprobs, 0.0), fresh) and fresh[5].eq(0).all()
    assert not torch.equal(fresh, rollout.logprobs)  # the bf16 sampler rounds apart from it
    stats = policy_update(policy, torch.optim.SGD(policy.parameters(), lr=0.1), algo, rollout, adv, sampling, None,
                          torch.Generator().manual_seed(0), bf16, recompute=True)
    assert passes == [prior, policy]  # the update read the pass the reward's KL made
    assert rollout.update_logprobs is None  # once: a second update on this rollout recomputes (an older policy's)
    assert stats["policy/sampler_logprob_dev"] == float((fresh - rollout.logprobs)[rollout.mask].abs().max())


def test_the_loop_keys_groups_by_the_items_classes():
    """group_by=condition in the loop: the advantages of a batch whose items 0 and 2 share class 3 are those of the
    groups keyed by each row's class (the global batch's labels, G rows each)."""
    from rlar import loop
    from rlar.algorithm.advantages import group_advantages

    algo = GRPO(num_generations=2, minibatch_size=2, group_by="condition", adv_clip=None)
    run = SimpleNamespace(algorithm=algo, ref_policy=None, critic=None, device="cpu")
    rollout = SimpleNamespace(mask=torch.ones(8, 4, dtype=torch.bool))
    rewards = torch.tensor([1.0, 2.0, 5.0, 7.0, 4.0, 0.0, 3.0, 3.0])
    labels, indices = torch.tensor([3, 1, 3, 6]), torch.arange(4)
    adv, _, valid, _ = loop.advantages(run, rollout, rewards, rewards.clone(), labels, indices)
    keyed, _ = group_advantages(rewards, 2, keys=labels.repeat_interleave(2), clip=None)
    assert torch.equal(adv, keyed) and valid.all()
    assert not torch.allclose(adv, group_advantages(rewards, 2, clip=None)[0])  # not the items' own groups
    std = math.sqrt((0.75**2 + 0.25**2 + 2.25**2 + 1.75**2) / 3)  # class 3: rewards 1, 2, 4, 0, mean 1.75
    assert adv[[0, 1, 4, 5]].tolist() == pytest.approx([-0.75 / std, 0.25 / std, 2.25 / std, -1.75 / std])


def test_under_a_value_head_each_tokens_kl_is_paid_at_its_own_position():
    """kl_penalty=reward with PPO's critic: GAE reads -beta x each action's log-ratio to the prior at its position and
    the reward at the last token (TRL's PPO), not the summed KL at the last token; objective/kl is still the mean
    summed log-ratio."""
    from rlar import loop
    from rlar.algorithm.update import reward_kl, value_advantages

    torch.manual_seed(0)
    policy = GPT(vocab_size=16, block_size=8, num_classes=2, n_layer=1, n_head=2, n_embd=16).eval()
    prior = GPT(vocab_size=16, block_size=8, num_classes=2, n_layer=1, n_head=2, n_embd=16).eval()
    critic = torch.nn.Linear(16, 1)
    rollout = collect_rollout(policy, torch.randint(0, 16, (2, 8)), torch.tensor([0, 1]), 4,
                              compose_config([]).rollout, torch.Generator().manual_seed(0))
    sampling = {"temperature": 1.0, "cfg_scale": 1.0}
    algo = PPO(num_generations=4, minibatch_size=8, value_head=True, beta=0.5, kl_penalty="reward", gae_lambda=0.9)
    run = SimpleNamespace(algorithm=algo, ref_policy=prior, policy=policy, sampling=sampling, critic=critic,
                          hw=SimpleNamespace(autocast=contextlib.nullcontext, precision="fp32"), device="cpu")
    rewards, keys = torch.randn(8, generator=torch.Generator().manual_seed(1)), torch.tensor([0, 1])
    adv, returns, _, stats = loop.advantages(run, rollout, rewards, rewards.clone(), keys, keys)
    log_ratio = reward_kl(prior, rollout, sampling, contextlib.nullcontext, 8)  # [8, T]
    expected, expected_returns = value_advantages(policy, critic, algo, rollout, rewards, sampling, None,
                                                  -0.5 * log_ratio)
    assert torch.allclose(adv, expected, atol=1e-6) and torch.allclose(returns, expected_returns, atol=1e-6)
    at_the_end, _ = value_advantages(policy, critic, algo, rollout, rewards - 0.5 * log_ratio.sum(1), sampling)
    assert not torch.allclose(adv, at_the_end, atol=1e-3)
    assert stats["objective/kl"] == pytest.approx(log_ratio.sum(1).mean().item(), rel=1e-5)


def test_a_log_ratio_that_is_not_finite_leaves_its_row_out_of_gae(monkeypatch):
    """kl_penalty=reward under the critic: a row whose log-ratio is inf (its reward finite) is not valid, and one
    whose log-ratio is NaN where its reward is NaN adds nothing: the advantages and returns stay finite."""
    from rlar import loop

    torch.manual_seed(0)
    policy = GPT(vocab_size=16, block_size=8, num_classes=2, n_layer=1, n_head=2, n_embd=16).eval()
    rollout = collect_rollout(policy, torch.randint(0, 16, (2, 8)), torch.tensor([0, 1]), 4,
                              compose_config([]).rollout, torch.Generator().manual_seed(0))

    def broken_log_ratio(*args):
        log_ratio = torch.where(rollout.mask, 0.1, 0.0)  # [8, T]
        log_ratio[2, 5], log_ratio[6, 1] = float("inf"), float("nan")
        return log_ratio

    monkeypatch.setattr(loop, "reward_kl", broken_log_ratio)
    algo = PPO(num_generations=4, minibatch_size=8, value_head=True, beta=0.5, kl_penalty="reward")
    run = SimpleNamespace(algorithm=algo, ref_policy=policy, policy=policy, critic=torch.nn.Linear(16, 1),
                          sampling={"temperature": 1.0, "cfg_scale": 1.0}, device="cpu",
                          hw=SimpleNamespace(autocast=contextlib.nullcontext, precision="fp32"))
    rewards = torch.randn(8, generator=torch.Generator().manual_seed(1))
    rewards[6] = float("nan")
    keys = torch.tensor([0, 1])
    adv, returns, valid, _ = loop.advantages(run, rollout, rewards, rewards.clone(), keys, keys)
    assert valid.tolist() == [True, True, False, True, True, True, False, True]
    assert adv.isfinite().all() and returns.isfinite().all()
    assert adv[valid].abs().sum() > 0 and not adv[~valid].any() and not returns[~valid].any()


def test_the_updates_stats_are_means_over_the_minibatches_that_scored_a_row():
    """Two tied groups dropped, each a whole minibatch: the entropy is the mean over the scored tokens, not pulled
    toward 0 by the empty minibatches, and the ratio check reads a minibatch with a scored row before any step (the
    first minibatch, of seed 0's order, is an empty one; the old log-probs are set 0.1 above the policy's)."""
    policy = tiny_policy("gpt")
    cfg = compose_config(["algorithm.num_generations=4", "algorithm.minibatch_size=4"])
    algo = GRPO(num_generations=4, minibatch_size=4, drop_zero_std_groups=True, grad_accum=4)
    labels = torch.tensor([0, 1, 2, 3])
    rollout = collect_rollout(policy.eval(), None, labels, 4, cfg.rollout, torch.Generator().manual_seed(0))
    rewards = torch.tensor([0., 0, 0, 0, 1, 2, 3, 4, 5, 5, 5, 5, 1, 0, 1, 0])  # groups 0 and 2 tie: dropped
    adv, keep, _ = algo.advantages(rewards, labels.repeat_interleave(4))
    rollout.mask = rollout.mask & keep[:, None]
    assert not rollout.mask[next(group_minibatches(16, 4, 4, torch.Generator().manual_seed(0)))].any()
    rollout.logprobs = rollout.logprobs + 0.1
    with torch.no_grad():
        logp_all = policy.eval()(rollout.context, rollout.condition).log_softmax(-1)  # [16, T, V]
    entropy = -(logp_all.exp() * logp_all).sum(-1)[rollout.mask].mean()
    stats = policy_update(policy, torch.optim.SGD(policy.parameters(), lr=0.0), algo, rollout, adv,
                          {"temperature": 1.0, "cfg_scale": 1.0}, 1.0, torch.Generator().manual_seed(0))
    assert stats["policy/minibatches"] == 4
    assert stats["policy/entropy"] == pytest.approx(float(entropy), rel=1e-5)
    assert stats["policy/ratio_max_abs_dev"] == pytest.approx(1 - math.exp(-0.1), abs=1e-5)


def test_a_process_whose_minibatches_scored_nothing_does_not_pull_the_stats_toward_0(monkeypatch):
    """Two processes: this one's minibatch scored rows (entropy 2, next-token loss 1), the other's scored none (it
    measured only the next-token loss, 3). The entropy is this process's alone; the next-token loss the mean of both."""
    here = MinibatchStats()
    here.add({"policy/entropy": 2.0, "loss/ntp": 1.0}, scored=True, before_step=True)
    other = MinibatchStats()
    other.add({"policy/entropy": 0.0, "loss/ntp": 3.0}, scored=False, before_step=True)
    monkeypatch.setattr(update_module.distributed, "sum_over_ranks", lambda counted: counted + torch.tensor(
        [[other.sums[key], other.seen[key]] for key in sorted(other.sums)], dtype=torch.float64))
    means = here.means(torch.device("cpu"))
    assert means["policy/entropy"] == 2.0 and means["loss/ntp"] == 2.0


def test_a_sample_drawn_from_nonfinite_logits_is_left_out_of_the_update_s_passes():
    """Token 5's embedding overflowed: the samples that drew it were drawn from NaN logits, and on the same weights the
    update's forward pass over them is NaN again. They are left out of it, and the other samples' step is taken."""
    torch.manual_seed(0)
    policy = GPT(vocab_size=16, block_size=8, num_classes=2, n_layer=1, n_head=2, n_embd=16)
    with torch.no_grad():
        policy.tok_emb.weight[5] = float("inf")
    labels = torch.tensor([0, 1, 0, 1])
    rollout = collect_rollout(policy.eval(), torch.randint(0, 16, (4, 8)), labels, 4, compose_config([]).rollout,
                              torch.Generator().manual_seed(0))
    rewards, fraction = drop_nonfinite_draws(rollout, torch.randn(16, generator=torch.Generator().manual_seed(1)), 1)
    assert 0 < fraction < 0.5 and torch.equal(rollout.nonfinite, rewards.isnan())
    algorithm = GRPO(num_generations=4, minibatch_size=16)
    adv, keep, _ = algorithm.advantages(rewards, labels.repeat_interleave(4))
    rollout.mask = rollout.mask & (rewards.isfinite() & keep)[:, None]
    before = [p.detach().clone() for p in policy.parameters()]
    stats = policy_update(policy, torch.optim.SGD(policy.parameters(), lr=0.1), algorithm, rollout, adv,
                          {"temperature": 1.0, "cfg_scale": 1.0}, None, torch.Generator().manual_seed(0))
    assert math.isfinite(stats["policy/grad_norm"]) and math.isfinite(stats["loss/policy"])
    assert any(not torch.equal(b, p) for b, p in zip(before, policy.parameters(), strict=True))  # the step was taken


def test_reinforce_recomputes_no_old_logprobs_unless_its_sampler_correction_reads_them():
    """Its loss has no ratio: under bf16 (old_logprobs=auto) the recompute would be a forward pass for nothing."""
    assert update_recomputes(GRPO(num_generations=4), "bf16") and not update_recomputes(GRPO(num_generations=4), "fp32")
    assert not update_recomputes(Reinforce(num_generations=4), "bf16")
    assert update_recomputes(Reinforce(num_generations=4, sampler_correction_cap=2.0), "bf16")
    assert update_recomputes(Reinforce(num_generations=4, old_logprobs="recompute"), "fp32")  # asked for



def test_the_loop_s_update_recomputes_no_old_logprobs_for_reinforce_under_bf16(monkeypatch):
    seen = []
    monkeypatch.setattr(rlar.loop, "policy_update", lambda *args: seen.append(args[-1]))  # its recompute flag
    for algorithm in (Reinforce(num_generations=4), GRPO(num_generations=4)):
        run = SimpleNamespace(algorithm=algorithm, hw=SimpleNamespace(precision="bf16", autocast=None),
                              train_policy=None, optimizer=None, sampling={}, generators={"update": None},
                              cfg=SimpleNamespace(train=SimpleNamespace(max_grad_norm=None)), ref_policy=None,
                              train_critic=None)
        rlar.loop.update(run, None, None, None)
    assert seen == [False, True]
