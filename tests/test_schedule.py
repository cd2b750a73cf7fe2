"""rollout.mode=schedule: the learned decoding schedule of a frozen ARPG (rlar/schedule)."""

import itertools
import math

import pytest
import torch
from hydra.utils import instantiate

from rlar.algorithm.algorithms import GRPO
from rlar.algorithm.update import policy_update
from rlar.config.store import compose_config
from rlar.config.validate import ConfigError, check_config
from rlar.loop import train_rl_loop
from rlar.policy.arpg import ARPG
from rlar.rollout.collect import collect_rollout
from rlar.rollout.parallel_decoding import arpg_logprobs
from rlar.schedule.decoder import ScheduleDecoder
from rlar.schedule.network import degree_logprob
from rlar.schedule.plackett_luce import gumbel_order, plackett_luce_logprob
from rlar.schedule.state import PENDING
from rlar.studies.schedule_study import plot, write_report

V, T, C = 32, 16, 5  # vocabulary, image tokens (a 4x4 grid), classes


def decoder(max_steps=6, max_degree=4, seed=0) -> ScheduleDecoder:
    """A tiny frozen ARPG with a schedule net whose heads are random (they start at zero: uniform)."""
    torch.manual_seed(seed)
    arpg = ARPG(V, T, C, n_layer=4, n_head=2, dim=32, multiple_of=32)
    torch.nn.init.normal_(arpg.head.weight, std=0.3)  # ARPG zero-inits it: logits would be constant
    d = ScheduleDecoder(arpg, max_steps=max_steps, max_degree=max_degree, hidden=16)
    for head in (d.net.degree.weight, d.net.score[1].weight):
        torch.nn.init.normal_(head, std=1.0)
    return d


LABELS = torch.tensor([0, 1, 2, -1, 4, 3, 1, 0])


@pytest.mark.parametrize("max_steps,max_degree", [(1, 4), (3, 2), (6, 4), (16, 16), (40, 3)])
def test_every_schedule_fills_each_position_once(max_steps, max_degree):
    d = decoder(max_steps, max_degree)
    s = d.decode(LABELS, len(LABELS), generator=torch.Generator().manual_seed(1))
    assert (s.decoded_at != PENDING).all() and (s.decoded_at < s.steps[:, None]).all()
    assert (s.steps >= 1).all() and (s.steps <= max_steps).all()
    assert (s.trace.degree.sum(0) == T).all()  # each position exactly once
    for row, steps in zip(s.decoded_at, s.steps.tolist(), strict=True):
        per_step = torch.bincount(row, minlength=steps)
        assert len(per_step) == steps and (per_step >= 1).all()  # >= 1 token at every step
    last = s.trace.degree.shape[0] - 1 == torch.arange(s.trace.degree.shape[0])[:, None]  # [S, 1]
    drawn = s.trace.drawn | ~last  # only a forced last step may exceed the degree head's range
    assert (s.trace.degree[drawn & (s.trace.degree > 0)] <= max_degree).all()
    assert not s.trace.drawn[s.trace.degree == 0].any()  # finished rows draw nothing


def test_plackett_luce_logprob_equals_brute_force_enumeration():
    torch.manual_seed(0)
    scores = torch.randn(1, 5)
    available = torch.tensor([[True, True, False, True, True]])
    free = [0, 1, 3, 4]
    for k in (1, 2, 3, 4):  # every ordered draw of k positions: probabilities sum to 1
        draws = torch.tensor(list(itertools.permutations(free, k)))
        picks = torch.cat([draws, torch.zeros(len(draws), 5 - k, dtype=torch.long)], dim=1)
        logp = plackett_luce_logprob(scores.expand(len(draws), 5), available.expand(len(draws), 5), picks,
                                     torch.full((len(draws),), k))
        assert logp.exp().sum().item() == pytest.approx(1.0, abs=1e-6)
    # (3, 0, 4) by hand: a softmax over what is left at each draw
    e = scores[0].exp()
    by_hand = e[3] / (e[0] + e[1] + e[3] + e[4]) * e[0] / (e[0] + e[1] + e[4]) * e[4] / (e[1] + e[4])
    logp = plackett_luce_logprob(scores, available, torch.tensor([[3, 0, 4, 1, 2]]), torch.tensor([3]))
    assert logp.item() == pytest.approx(math.log(by_hand.item()), abs=1e-6)
    assert plackett_luce_logprob(scores, available, torch.tensor([[3, 0, 4, 1, 2]]), torch.tensor([0])).item() == 0


def test_plackett_luce_gradient_is_finite_for_finished_rows():
    scores = torch.randn(2, 4, requires_grad=True)
    available = torch.tensor([[True, True, True, False], [False, False, False, False]])
    logp = plackett_luce_logprob(scores, available, torch.tensor([[2, 0, 0, 0], [0, 0, 0, 0]]), torch.tensor([2, 0]))
    logp.sum().backward()
    assert torch.isfinite(scores.grad).all() and (scores.grad[1] == 0).all() and scores.grad[0, 3] == 0


def test_gumbel_top_k_draws_the_plackett_luce_law():
    scores = torch.tensor([[1.0, 0.0, -0.5, 2.0]]).expand(40000, 4)
    available = torch.tensor([[True, True, True, False]]).expand(40000, 4)
    order = gumbel_order(scores, available, torch.Generator().manual_seed(0))
    assert (order[:, 3] == 3).all()  # the unavailable position is never drawn before the others
    for first, second in [(0, 1), (1, 0), (2, 0)]:
        freq = ((order[:, 0] == first) & (order[:, 1] == second)).float().mean().item()
        exact = plackett_luce_logprob(scores[:1], available[:1], torch.tensor([[first, second, 0, 0]]),
                                      torch.tensor([2])).exp().item()
        assert freq == pytest.approx(exact, abs=0.01)


def test_degree_logprob_is_masked_to_what_is_left():
    logits = torch.tensor([[0.5, -1.0, 2.0, 0.0, 1.0]] * 3)  # k = 1..5
    remaining = torch.tensor([3, 5, 0])
    for k in (1, 2, 3):
        logp, entropy = degree_logprob(logits, remaining, torch.full((3,), k))
        allowed = logits[0, :3].log_softmax(-1)
        assert logp[0].item() == pytest.approx(allowed[k - 1].item(), abs=1e-6)  # k > 3 takes no mass
        assert entropy[0].item() == pytest.approx(-(allowed.exp() * allowed).sum().item(), abs=1e-6)
    logp, entropy = degree_logprob(logits, remaining, torch.tensor([4, 5, 1]))
    assert logp[1].item() == pytest.approx(logits[1].log_softmax(-1)[4].item(), abs=1e-6)
    assert logp[0] == float("-inf")  # 4 of 3 positions left: never drawn
    assert torch.isfinite(logp[1:]).all() and torch.isfinite(entropy).all()  # a finished row stays finite


@pytest.mark.parametrize("cfg_scale", [1.0, 2.0])
def test_generator_tokens_score_as_the_step_grouped_recompute(cfg_scale):
    """The per-row states give the KV-cached sampler's attention: each row's token log-probs equal ARPG's
    teacher-forced recompute under that row's own order and step grouping."""
    d = decoder()
    s = d.decode(LABELS, len(LABELS), temperature=0.7, cfg_scale=cfg_scale, generator=torch.Generator().manual_seed(2))
    for i in range(len(LABELS)):
        at = s.decoded_at[i : i + 1]  # [1, T]
        sizes = torch.bincount(at[0])
        logp, _ = arpg_logprobs(d.generator, s.tokens[i : i + 1], LABELS[i : i + 1], at.argsort(dim=1, stable=True),
                                sizes, torch.full((len(sizes),), cfg_scale), temperature=0.7)
        assert torch.allclose(logp.gather(-1, s.tokens[i : i + 1, :, None])[..., 0], s.logprobs[i : i + 1], atol=1e-5)


def test_schedule_logprob_is_recomputed_from_the_trace():
    d = decoder()
    s = d.decode(LABELS, len(LABELS), generator=torch.Generator().manual_seed(3))
    assert not any(t.is_inference() for t in (s.trace.pooled, s.trace.uncertainty))  # cloned out of inference mode
    logp, entropy = d(s.trace)
    assert torch.allclose(logp[:, 0], s.schedule_logprob, atol=1e-5) and (entropy > 0).all()
    idx = torch.tensor([5, 2, 7])
    assert torch.allclose(d(s.trace.rows(idx))[0][:, 0], s.schedule_logprob[idx], atol=1e-5)
    assert (s.schedule_logprob < 0).all()
    logp.sum().backward()
    assert d.net.position.grad.abs().sum() > 0 and d.generator.head.weight.grad is None


def test_the_entropy_bonus_has_finite_gradients():
    """The entropy of the degree head and of the first position, masked to what is left, differentiates to finite
    values (an entropy bonus would otherwise write NaN into every weight of the schedule net)."""
    d = decoder(max_steps=8, max_degree=4)
    s = d.decode(LABELS, len(LABELS), generator=torch.Generator().manual_seed(3))
    _, entropy = d(s.trace)
    entropy.sum().backward()
    grads = [p.grad for p in d.net.parameters() if p.grad is not None]
    assert grads and all(torch.isfinite(g).all() for g in grads)
    assert sum(g.abs().sum() for g in grads) > 0


def test_grpo_trains_the_schedule_and_never_the_generator():
    """Rewarding fewer steps: GRPO on schedule rollouts lowers the mean step count; ratio 1 on the first pass."""
    d = decoder(max_steps=8, max_degree=4)
    frozen = {k: v.clone() for k, v in d.generator.state_dict().items()}
    net = {k: v.clone() for k, v in d.net.state_dict().items()}
    algorithm = GRPO(num_generations=8, minibatch_size=32, epochs=2)
    optimizer = torch.optim.Adam([p for p in d.parameters() if p.requires_grad], lr=3e-2)
    rollout_cfg = compose_config(["policy=arpg", "rollout.mode=schedule"]).rollout
    gen = torch.Generator().manual_seed(0)
    codes, labels = torch.zeros(4, T, dtype=torch.long), torch.arange(4)
    steps = []
    for _ in range(12):
        d.eval()
        rollout = collect_rollout(d, codes, labels, 8, rollout_cfg, gen)
        assert rollout.logprobs.shape == rollout.mask.shape == (32, 1)
        rewards = -rollout.steps.float()
        adv, _, _ = algorithm.advantages(rewards, labels.repeat_interleave(8))
        stats = policy_update(d, optimizer, algorithm, rollout, adv, {"temperature": 1.0, "cfg_scale": 1.0}, 1.0,
                              gen)
        assert stats["policy/ratio_max_abs_dev"] <= 1e-5
        steps.append(rollout.steps.float().mean().item())
        assert not d.generator.training
    assert all(torch.equal(v, d.generator.state_dict()[k]) for k, v in frozen.items())
    assert not any(p.requires_grad for p in d.generator.parameters())
    assert any(not torch.equal(v, d.net.state_dict()[k]) for k, v in net.items())
    assert sum(steps[-3:]) / 3 < sum(steps[:3]) / 3 - 0.5


def compose(overrides=()):
    return compose_config(["experiment=arpg_schedule", *overrides])


@pytest.mark.parametrize("overrides,message", [
    (["policy=gpt"], "rollout.mode=schedule needs a parallel decoder"),
    (["algorithm.beta=0.1"], "algorithm.beta=0.1"),
    (["train.warmup_steps=5"], "train.warmup_steps=5"),
    (["rollout.cfg_schedule=linear"], "rollout.cfg_schedule=constant"),
    (["schedule.max_steps=0"], "schedule.max_steps"),
    (["hardware=ddp", "hardware.device=cpu", "hardware.precision=fp32"], "one process"),
])
def test_bad_schedule_settings_are_refused(overrides, message):
    with pytest.raises(ConfigError, match=message):
        check_config(compose(overrides))


@pytest.mark.slow
def test_tiny_loop_learns_a_schedule_with_the_generator_frozen(tiny, tmp_path, tb_scalars):
    cfg = compose([*tiny, "eval.max_items=4", "eval.classifier_model.train.steps=20", "schedule.max_steps=6",
                   "reward.components.perceptual_digits.classifier.train.steps=20",
                   "schedule.max_degree=16", "reward.components.efficiency.target=3", "rollout.cfg_scale=2.0"])
    check_config(cfg)
    summary = train_rl_loop(cfg, tmp_path)
    assert max(tb_scalars(tmp_path, "policy/ratio_max_abs_dev")) <= 1e-5
    assert all(1 <= s <= 6 for s in tb_scalars(tmp_path, "rollout/steps"))
    assert 1 <= summary["eval_steps_before"] <= 6 and 1 <= summary["eval_steps_after"] <= 6
    assert math.isfinite(summary["eval_fd_after"]) and math.isfinite(summary["eval_reward_after"])
    saved = torch.load(tmp_path / "checkpoints" / "last.pt", weights_only=True)["policy"]  # generator.*, net.*
    data = instantiate(cfg.data)
    prior = instantiate(cfg.policy, tokenizer=instantiate(cfg.tokenizer, data=data), data=data)  # the cached prior
    assert all(torch.equal(saved[f"generator.{k}"], v) for k, v in prior.state_dict().items())
    assert {k.split(".")[0] for k in saved} == {"generator", "net"}


def test_a_group_shares_its_token_noise():
    """With one (forced) step there is no schedule to choose: samples of one group are then identical, those of
    different groups (same label) are not; without common noise every sample differs."""
    labels = torch.zeros(6, dtype=torch.long)
    d = decoder(max_steps=1)
    s = d.decode(labels, 6, generator=torch.Generator().manual_seed(0), group_size=3)
    assert torch.equal(s.tokens[0], s.tokens[2]) and torch.equal(s.tokens[3], s.tokens[5])
    assert not torch.equal(s.tokens[0], s.tokens[3])
    d.common_noise = False
    s = d.decode(labels, 6, generator=torch.Generator().manual_seed(0), group_size=3)
    assert not torch.equal(s.tokens[0], s.tokens[1])


def test_study_writes_its_table_and_plot(tmp_path):
    judged = {"eval/reward": -0.5, "eval/class_acc": 0.3, "eval/precision": 0.6, "eval/recall": 0.7,
              "eval/coverage": 0.8}
    fixed = {s: {n: {**judged, "eval/fd": 200.0 + n + s, "eval/steps": float(n)} for n in (4, 8)} for s in (0, 1)}
    learned = {s: {when: {**judged, "eval/fd": 150.0 + s, "eval/recall": 0.6 + 0.1 * s, "eval/steps": 7.5}
                   for when in ("before", "after")} for s in (0, 1)}
    plot(fixed, learned, tmp_path / "curves.png")
    text = write_report(fixed, learned, ["hardware.num_threads=1"], tmp_path).read_text()
    assert (tmp_path / "curves.png").stat().st_size > 10_000
    assert ("| fixed arccos | 8 | -0.500 ± 0.000 | 208.5 ± 0.7 | 0.300 ± 0.000 | 0.600 ± 0.000 | 0.700 ± 0.000 | "
            "0.800 ± 0.000 | 208.0 / 209.0 |") in text
    assert ("| learned | 7.50 ± 0.00 | -0.500 ± 0.000 | 150.5 ± 0.7 | 0.300 ± 0.000 | 0.600 ± 0.000 | "
            "0.650 ± 0.071 |") in text


def test_each_token_is_an_exact_draw_of_its_distribution():
    """With one (forced) step every position is drawn from the ARPG's distribution given the label alone: over
    many samples a token's frequency is its probability (the sampler records each drawn token's log-probability)."""
    n = 6000
    d = decoder(max_steps=1)
    d.common_noise = False
    s = d.decode(torch.zeros(n, dtype=torch.long), n, generator=torch.Generator().manual_seed(0))
    for position in (0, 7):
        tokens, logprobs = s.tokens[:, position], s.logprobs[:, position]
        drawn = tokens.unique()
        probs = torch.stack([logprobs[tokens == v][0].exp() for v in drawn])  # [K]: one per drawn token
        assert all(torch.allclose(logprobs[tokens == v], p.log()) for v, p in zip(drawn, probs, strict=True))
        freqs = torch.stack([(tokens == v).float().mean() for v in drawn])
        assert probs.sum() > 0.99  # what was never drawn has (almost) no mass
        assert (freqs - probs).abs().max() < 4 * (0.25 / n) ** 0.5  # four standard errors at worst
