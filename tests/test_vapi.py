"""The VA-pi objective's pieces (noisy teacher-forced context, NTP regulariser, label dropout, KL only when on),
and the seeds' API without the flaws of VA-pi's public prototype (docs/algorithms.md, VA-pi)."""

import contextlib
import copy

import pytest
import torch
import torch.nn.functional as F
from omegaconf import OmegaConf

import rlar.algorithm.update as update
import rlar.build
from rlar import compute_sequence_logprob, reinforce_update, sample_codes_with_logprobs
from rlar.algorithm.algorithms import GRPO
from rlar.algorithm.update import minibatch_loss, policy_update
from rlar.config.store import compose_config
from rlar.config.validate import check_config
from rlar.loop import train_rl_loop
from rlar.rollout.collect import collect_rollout, drop_labels, noisy_context
from rlar.tokenizer.llamagen_vq import LlamaGenVQ

ROLLOUT = {"mode": "teacher_forced", "temperature": 1.0, "top_k": None, "top_p": None, "cfg_scale": 1.0,
           "cfg_interval": None, "prefix_len": 0, "token_noise_prob": 0.0, "label_dropout": 0.0,
           "micro_batch_size": None}


def rollout_cfg(**changes):
    return OmegaConf.create({**ROLLOUT, **changes})


def test_noisy_context_replaces_tokens_at_the_configured_rate():
    codes = torch.randint(64, (500, 64), generator=torch.Generator().manual_seed(0))
    assert noisy_context(codes, 0.0, 64, torch.Generator()) is codes
    noisy = noisy_context(codes, 0.5, 64, torch.Generator().manual_seed(1))
    changed = (noisy != codes).float().mean().item()
    assert changed == pytest.approx(0.5 * 63 / 64, abs=0.01)  # a drawn code equals the old one 1 time in 64
    assert noisy.min() >= 0 and noisy.max() < 64


def test_label_dropout_rate_and_null_class():
    labels = torch.arange(10).repeat(200)
    dropped = drop_labels(labels, 0.3, torch.Generator().manual_seed(0))
    null = dropped < 0
    assert null.float().mean().item() == pytest.approx(0.3, abs=0.03)
    assert torch.equal(dropped[~null], labels[~null])


def test_a_prefix_rollout_continues_the_noisy_prefix_and_its_update_reads_it(gpt):
    gt = torch.randint(32, (3, 12), generator=torch.Generator().manual_seed(0))
    cfg = rollout_cfg(mode="prefix", prefix_len=6, token_noise_prob=0.9)
    rollout = collect_rollout(gpt, gt, torch.tensor([0, 1, 2]), 4, cfg, torch.Generator().manual_seed(1))
    prefix = rollout.tokens[:, :6]  # [12, 6]
    assert torch.equal(prefix, rollout.target_context[:, :6])  # the noisy context's ...
    assert not torch.equal(prefix, gt.repeat_interleave(4, 0)[:, :6])  # ... not the ground truth
    assert torch.equal(rollout.context, rollout.tokens) and not rollout.mask[:, :6].any()  # read, never scored
    clean = collect_rollout(gpt, gt, torch.tensor([0, 1, 2]), 4, rollout_cfg(mode="prefix", prefix_len=6),
                            torch.Generator().manual_seed(1))
    assert torch.equal(clean.tokens[:, :6], gt.repeat_interleave(4, 0)[:, :6])


def test_noisy_context_is_the_same_in_rollout_update_and_kl_passes(gpt, monkeypatch):
    """The rollout samples under the noisy context; the update, the KL reference and the NTP term read that same
    context (one forward pass for surrogate and NTP), so the first ratio is 1."""
    gt = torch.randint(32, (3, 12), generator=torch.Generator().manual_seed(0))
    labels = torch.tensor([0, 1, 2])
    rollout = collect_rollout(gpt, gt, labels, 4, rollout_cfg(token_noise_prob=0.5), torch.Generator().manual_seed(1))
    assert not torch.equal(rollout.context, gt.repeat_interleave(4, 0))  # noised ...
    assert torch.equal(rollout.targets, gt.repeat_interleave(4, 0))  # ... but the NTP targets are clean
    seen = []
    real = update.policy_logprobs
    monkeypatch.setattr(update, "policy_logprobs", lambda model, context, *a, **k: (
        seen.append((model, context.clone())), real(model, context, *a, **k))[1])
    ref = copy.deepcopy(gpt).requires_grad_(False)
    algo = GRPO(num_generations=4, minibatch_size=12, beta=0.1, ntp_weight=0.5)
    opt = torch.optim.SGD(gpt.parameters(), lr=0.0)
    stats = policy_update(gpt, opt, algo, rollout, torch.randn(12), {"temperature": 1.0, "cfg_scale": 1.0}, None,
                          torch.Generator().manual_seed(2), ref_policy=ref)
    assert [m for m, _ in seen] == [gpt, ref]  # one policy pass (surrogate + NTP), one reference pass
    (_, policy_ctx), (_, ref_ctx) = seen
    assert torch.equal(policy_ctx, ref_ctx)
    assert sorted(map(tuple, policy_ctx.tolist())) == sorted(map(tuple, rollout.context.tolist()))
    assert stats["policy/ratio_max_abs_dev"] < 1e-5 and stats["loss/ntp"] > 0


def test_ntp_term_is_the_cross_entropy_of_the_ground_truth(gpt):
    gt = torch.randint(32, (2, 12), generator=torch.Generator().manual_seed(3))
    labels = torch.tensor([1, 4])
    rollout = collect_rollout(gpt, gt, labels, 2, rollout_cfg(), torch.Generator().manual_seed(4))
    idx, adv = torch.arange(4), torch.zeros(4)
    sampling = {"temperature": 1.0, "cfg_scale": 1.0}
    losses = {w: minibatch_loss(gpt, GRPO(num_generations=2, minibatch_size=4, ntp_weight=w), rollout, adv, idx,
                                sampling, contextlib.nullcontext)[0]
              for w in (0.0, 0.3)}
    by_hand = F.cross_entropy(gpt(gt, labels).flatten(0, 1), gt.flatten())  # mean over the 2 items x 12 tokens
    torch.testing.assert_close(losses[0.3] - losses[0.0], 0.3 * by_hand, atol=1e-6, rtol=1e-5)


def test_ntp_in_autoregressive_rollouts_reads_the_ground_truth_context(gpt):
    gt = torch.randint(32, (2, 12), generator=torch.Generator().manual_seed(5))
    labels = torch.tensor([0, 3])
    rollout = collect_rollout(gpt, gt, labels, 2, rollout_cfg(mode="autoregressive"), torch.Generator())
    assert torch.equal(rollout.target_context, gt.repeat_interleave(2, 0))
    algo = GRPO(num_generations=2, minibatch_size=4, ntp_weight=1.0)
    loss0 = minibatch_loss(gpt, GRPO(num_generations=2, minibatch_size=4), rollout, torch.zeros(4), torch.arange(4),
                           {"temperature": 1.0, "cfg_scale": 1.0}, contextlib.nullcontext)[0]
    loss1, stats = minibatch_loss(gpt, algo, rollout, torch.zeros(4), torch.arange(4),
                                  {"temperature": 1.0, "cfg_scale": 1.0}, contextlib.nullcontext)
    by_hand = F.cross_entropy(gpt(gt, labels).flatten(0, 1), gt.flatten())
    torch.testing.assert_close(loss1 - loss0, by_hand, atol=1e-6, rtol=1e-5)
    assert stats["loss/ntp"] == pytest.approx(by_hand.item(), rel=1e-5)


@pytest.mark.slow
@pytest.mark.parametrize("mode", ["teacher_forced", "autoregressive"])
def test_ratio_is_one_with_label_dropout(tiny, tmp_path, tb_scalars, mode):
    """VA-pi drops labels in the update pass only; here the rollout draws the dropout and the update reads it."""
    cfg = compose_config([*tiny, f"rollout.mode={mode}", "rollout.label_dropout=0.5", "rollout.cfg_scale=2.0",
                          "rollout.temperature=0.8", "rollout.token_noise_prob=0.3", "algorithm.ntp_weight=0.1"])
    train_rl_loop(cfg, tmp_path)
    assert max(tb_scalars(tmp_path, "policy/ratio_max_abs_dev")) < 1e-5
    assert all(v > 0 for v in tb_scalars(tmp_path, "loss/ntp"))


@pytest.mark.slow
def test_no_reference_model_when_kl_is_off(tiny, tmp_path, monkeypatch):
    copies, real_deepcopy = [], copy.deepcopy

    def counting_deepcopy(x, *args, **kwargs):
        if isinstance(x, torch.nn.Module):
            copies.append(type(x).__name__)
        return real_deepcopy(x, *args, **kwargs)

    monkeypatch.setattr(rlar.build.copy, "deepcopy", counting_deepcopy)
    train_rl_loop(compose_config([*tiny, "algorithm.beta=0.0", "train.iterations=1"]), tmp_path / "off")
    assert copies == []
    train_rl_loop(compose_config([*tiny, "algorithm.beta=0.01", "train.iterations=1"]), tmp_path / "on")
    assert copies == ["GPT"]


# -- the public prototype's flaws are absent from rlar's seed API ---------------------------------------------------

def test_old_and_new_logprobs_cover_the_same_tokens_and_distribution(gpt):
    """Prototype: old log-probs over T filtered tokens, new over T-1 unfiltered ones."""
    labels = torch.tensor([2, 2, 2])
    tokens, old = sample_codes_with_logprobs(gpt, (torch.zeros(3, 0, dtype=torch.long), labels), 12, top_k=4,
                                             temperature=0.9, generator=torch.Generator().manual_seed(0))
    new = compute_sequence_logprob(gpt, tokens, labels, temperature=0.9)
    assert old.shape == new.shape == tokens.shape  # all T tokens, token 0 included
    torch.testing.assert_close(new, old, atol=1e-5, rtol=0)  # the untruncated distribution on both sides


def test_reinforce_gradients_flow_through_the_recompute(gpt):
    """Prototype: sampling under no_grad, then backward through the sampled log-probs: no graph."""
    labels = torch.tensor([1, 1])
    tokens, logp = sample_codes_with_logprobs(gpt, (torch.zeros(2, 0, dtype=torch.long), labels), 12)
    assert not logp.requires_grad
    before = [p.detach().clone() for p in gpt.parameters()]
    opt = torch.optim.SGD(gpt.parameters(), lr=1.0)
    reinforce_update(gpt, opt, tokens, logp, torch.tensor([1.0, -1.0]), labels=labels)
    assert sum(int(not torch.equal(a, b)) for a, b in zip(before, gpt.parameters(), strict=True)) > 0


def test_the_class_label_reaches_the_policy(gpt):
    """Prototype: class token hard-coded to 0."""
    tokens = torch.randint(32, (1, 12), generator=torch.Generator().manual_seed(0)).expand(2, 12)
    logp = compute_sequence_logprob(gpt, tokens, torch.tensor([0, 3]))
    assert not torch.allclose(logp[0], logp[1])
    empty = torch.zeros(4, 0, dtype=torch.long)
    a, _ = sample_codes_with_logprobs(gpt, (empty, torch.full((4,), 0)), 12, generator=torch.Generator().manual_seed(7))
    b, _ = sample_codes_with_logprobs(gpt, (empty, torch.full((4,), 4)), 12, generator=torch.Generator().manual_seed(7))
    assert not torch.equal(a, b)  # same random stream, different class: different samples


def test_llamagen_decoder_gets_its_latent_shape():
    """Prototype: ``decode_code(indices)`` without the latent shape, which LlamaGen's VQ needs (a non-square grid
    here; tests/test_tokenizer_zoo.py checks the decoded values)."""
    vq = LlamaGenVQ((8, 16), codebook_size=32, ch=32, ch_mult=[1, 2], num_res_blocks=1, z_channels=32).eval()
    with torch.no_grad():
        images = vq.decode_code(torch.randint(32, (2, 32)))
    assert vq.grid == (4, 8) and images.shape == (2, 3, 8, 16)


# -- the recipes ----------------------------------------------------------------------------------------------------

def test_experiment_vapi_is_the_objective_on_the_embedded_default():
    cfg = compose_config(["experiment=vapi"])
    check_config(cfg)
    assert cfg.rollout.mode == "teacher_forced" and cfg.algorithm.ntp_weight > 0 and cfg.algorithm.beta == 0
    assert set(cfg.reward.components) == {"pixel", "perceptual_digits"}  # the offline stand-in for LPIPS


def test_experiment_vapi_llamagen_xxl_is_the_published_recipe():
    cfg = compose_config(["experiment=vapi_llamagen_xxl", "data.path=/data/imagenet_1pct"])
    assert (cfg.policy.size, cfg.tokenizer._target_.split(".")[-1], cfg.tokenizer.image_size) == (
        "GPT-XXL", "build_llamagen_vq", 384)
    assert (cfg.hardware.strategy, cfg.hardware.precision) == ("fsdp", "bf16")
    a, t = cfg.algorithm, cfg.train
    assert (cfg.optimizer.lr, a.num_generations, a.clip_eps, a.adv_clip, a.ntp_weight) == (1e-6, 8, 0.2, 5.0, 0.1)
    gpus = 8
    per_gpu_sequences = t.batch_size // gpus * a.num_generations  # 16 images x G
    assert per_gpu_sequences // a.minibatch_size // a.grad_accum == 1  # one optimizer step per rollout
    assert set(cfg.reward.components) == {"pixel", "lpips"} and cfg.reward.weights == {"pixel": 1.0, "lpips": 1.0}
    # VA-pi's --uncond-prob, drawn in the rollout; no embedded judge on ImageNet; LPIPS scored 32 images at a time
    assert (cfg.rollout.label_dropout, cfg.eval.classifier, t.score_chunk_size) == (0.1, False, 32)


@pytest.mark.slow
def test_vapi_evaluates_free_running_samples_with_and_without_guidance(tiny, tmp_path):
    """eval/* unguided and eval_cfg/* under guidance 2, each with the reward's terms on their own; the recipe's
    reward is the sum of its two terms (weights 1, not normalized), so the terms' means add up to the total's."""
    cfg = compose_config(["experiment=vapi", *tiny, "train.iterations=1", "eval.every=1", "eval.samples_per_item=2",
                          "reward.components.perceptual_digits.classifier.train.steps=20"])
    summary = train_rl_loop(cfg, tmp_path)
    for when in ("before", "after"):
        assert {f"eval_{m}_{when}" for m in ("reward", "fd", "class_acc")} <= summary.keys()
        assert {f"eval_cfg_{m}_{when}" for m in ("reward", "fd", "class_acc")} <= summary.keys()
    for result in summary["history"]:
        for group in ("eval", "eval_cfg"):
            terms = result[f"{group}/reward/pixel"] + result[f"{group}/reward/perceptual_digits"]
            assert result[f"{group}/reward"] == pytest.approx(terms, rel=1e-5)
            assert result[f"{group}/reward/pixel"] < 0 and result[f"{group}/reward/perceptual_digits"] < 0
        assert result["eval_cfg/fd"] != result["eval/fd"]  # other samples: guidance changes the distribution
