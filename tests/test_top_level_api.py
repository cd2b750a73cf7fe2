"""The seeds' Python API, importable from ``rlar``, without the flaws of the public prototype."""

import pytest
import torch

import rlar
from rlar import (
    build_ar_policy,
    build_gpt_policy,
    compute_sequence_logprob,
    groupwise_advantages,
    grpo_update,
    reconstruction_reward,
    reinforce_update,
    sample_multiple_generations,
)
from rlar.config.store import compose_config
from rlar.policy.gpt import GPT


@pytest.fixture
def policy_and_opt():
    torch.manual_seed(0)
    return build_ar_policy(16, 6, {"type": "gpt", "n_layer": 1, "n_head": 2, "n_embd": 16, "num_classes": 3,
                                   "lr": 1e-2})


def test_top_level_names():
    for name in rlar.__all__:
        assert callable(getattr(rlar, name)), name


def test_groupwise_advantages_by_hand():
    adv = groupwise_advantages(torch.tensor([1.0, 3.0, 0.0, 0.0]), 2)
    s = 2 ** 0.5  # unbiased std of (1, 3)
    assert torch.allclose(adv, torch.tensor([-1 / s, 1 / s, 0.0, 0.0]), atol=1e-6)


def test_reconstruction_reward_is_negative_distance():
    x = torch.zeros(2, 1, 2, 2)
    y = torch.tensor([0.0, 0.5]).view(2, 1, 1, 1).expand(2, 1, 2, 2)
    assert torch.allclose(reconstruction_reward(x, y, "l2"), torch.tensor([0.0, -0.25]))
    assert torch.allclose(reconstruction_reward(x, y, "l1"), torch.tensor([0.0, -0.5]))
    # normalized over the batch: [0, -0.25] -> mean -0.125, std 0.1768; a NaN item stays NaN, alone
    y3 = torch.cat([y, torch.full((1, 1, 2, 2), float("nan"))])
    scored = reconstruction_reward(torch.zeros(3, 1, 2, 2), y3, "l2", normalize=True)
    assert torch.allclose(scored[:2], torch.tensor([0.7071, -0.7071]), atol=1e-4) and scored[2].isnan()
    assert reconstruction_reward(x[:1], y[:1], "l2", normalize=True).tolist() == [0.0]  # one item: nothing to compare


def test_reinforce_update_moves_the_policy_towards_rewarded_samples(policy_and_opt):
    policy, opt = policy_and_opt
    labels = torch.tensor([1, 1, 1, 1])
    tokens, logp = sample_multiple_generations(policy, (torch.zeros(1, 0, dtype=torch.long), labels[:1]), 6, 4,
                                               generator=torch.Generator().manual_seed(0))
    rewards = torch.tensor([1.0, 0.0, 0.0, 0.0])
    before = compute_sequence_logprob(policy, tokens, labels).sum(1).detach()
    for _ in range(5):
        reinforce_update(policy, opt, tokens, logp, rewards, labels=labels)
    after = compute_sequence_logprob(policy, tokens, labels).sum(1).detach()
    assert after[0] - before[0] > (after[1:] - before[1:]).max()  # the rewarded sample gained the most


def test_grpo_update_uses_the_same_tokens_and_labels(policy_and_opt):
    policy, opt = policy_and_opt
    labels = torch.tensor([2, 2])
    tokens, logp = sample_multiple_generations(policy, (torch.zeros(1, 0, dtype=torch.long), labels[:1]), 6, 2)
    assert logp.shape == tokens.shape  # all T tokens scored, not T-1
    assert torch.allclose(compute_sequence_logprob(policy, tokens, labels), logp, atol=1e-5)
    weights = [p.detach().clone() for p in policy.parameters()]
    for old in (logp, logp.sum(1)):  # per-token and per-sequence ratios
        grpo_update(policy, opt, tokens, old, torch.tensor([1.0, -1.0]), clip_range=0.2, labels=labels)
    assert any(not torch.equal(a, b) for a, b in zip(weights, policy.parameters(), strict=True))


def test_unknown_policy_type_is_named():
    with pytest.raises(ValueError, match="llamagen"):
        build_ar_policy(16, 6, {"type": "transformer-xl"})


@pytest.mark.parametrize("kind", ["llamagen", "llammagen"])
def test_llamagen_policy_type_in_both_spellings(kind):
    policy, opt = build_ar_policy(16, 16, {"type": kind, "num_classes": 3, "extra": {"dim": 32, "n_layer": 1}})
    assert type(policy).__name__ == "LlamaGen" and policy.n_embd == 32 and policy.vocab_size == 16
    assert opt.param_groups[0]["params"][0] is next(policy.parameters())


def test_pretrained_codebook_initializes_token_embeddings(tmp_path):
    codebook = torch.randn(16, 4)
    for width in (4, 24):  # same width: the codebook itself; wider: an orthonormal map, so distances keep their order
        policy, _ = build_gpt_policy(None, 16, 6, {"n_embd": width, "n_head": 2, "n_layer": 1,
                                                   "use_pretrained_codebook": True, "codebook": codebook})
        emb = policy.tok_emb.weight.detach()
        assert emb.std().item() == pytest.approx(0.02, rel=1e-3)
        scale = torch.cdist(emb, emb)[0, 1:] / torch.cdist(codebook, codebook)[0, 1:]
        assert torch.allclose(scale, scale[0].expand_as(scale), rtol=1e-4)  # the geometry up to one scale
    wide = torch.randn(16, 256)  # a codebook wider than the model (taming, IBQ: 256): an orthogonal projection
    policy, _ = build_gpt_policy(None, 16, 6, {"n_embd": 8, "n_head": 2, "n_layer": 1,
                                               "use_pretrained_codebook": True, "codebook": wide})
    projected = policy.tok_emb.weight.detach()  # [16, 8]
    assert projected.shape == (16, 8) and projected.std().item() == pytest.approx(0.02, rel=1e-3)
    basis, _ = torch.linalg.qr(torch.randn(256, 8, generator=torch.Generator().manual_seed(0)))  # [256, 8]
    torch.testing.assert_close(projected, wide @ basis * (0.02 / (wide @ basis).std()))  # seed 0's projection
    torch.save({"state_dict": {"quantize.embedding.weight": codebook}}, tmp_path / "vq.ckpt")
    cfg = {"n_embd": 4, "n_head": 2, "n_layer": 1, "use_pretrained_codebook": True,
           "codebook_ckpt_path": tmp_path / "vq.ckpt"}
    policy, _ = build_gpt_policy(None, 16, 6, cfg)
    assert torch.allclose(policy.tok_emb.weight / policy.tok_emb.weight.std(), codebook / codebook.std(), atol=1e-5)
    with pytest.raises(ValueError, match="vocab_size"):
        build_gpt_policy(None, 8, 6, {"n_embd": 4, "n_head": 2, "use_pretrained_codebook": True, "codebook": codebook})
    torch.save({"encoder.weight": codebook}, tmp_path / "other.ckpt")
    with pytest.raises(ValueError, match=r"other.ckpt holds no entry ending in embedding.weight .*'encoder.weight'"):
        build_gpt_policy(None, 16, 6, {**cfg, "codebook_ckpt_path": tmp_path / "other.ckpt"})
    with pytest.raises(ValueError, match="use_pretrained_codebook=True needs the codebook"):
        build_gpt_policy(None, 16, 6, {k: v for k, v in cfg.items() if k != "codebook_ckpt_path"})


def test_what_the_api_config_leaves_out_is_the_hydra_configs_default():
    cfg = compose_config([])
    policy, optimizer = build_gpt_policy(None, 16, 6, {"num_classes": 10})
    assert (len(policy.blocks), policy.n_embd) == (cfg.policy.n_layer, cfg.policy.n_embd)
    group = optimizer.param_groups[0]
    assert (group["lr"], list(group["betas"]), group["weight_decay"]) == (
        cfg.optimizer.lr, list(cfg.optimizer.betas), cfg.optimizer.weight_decay)
    policy, _ = build_ar_policy(16, 6, {"type": "gpt", "cls": GPT})  # rlar's GPT named explicitly: the same
    assert (len(policy.blocks), policy.n_embd) == (cfg.policy.n_layer, cfg.policy.n_embd)
    policy, _ = build_ar_policy(16, 6, {"n_layer": 2, "extra": {"n_embd": 32}})  # given as a key or in extra
    assert (len(policy.blocks), policy.n_embd) == (2, 32)
