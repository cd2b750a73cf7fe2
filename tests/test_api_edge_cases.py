"""The seeds' API as an outside review called it (docs/api.md): updates after a rollout with a prefix or guidance,
policy configs with unknown keys, the codebook of every tokenizer rlar builds, and the sampler's edge cases."""

import math
import re

import pytest
import torch
import torch.nn.functional as F

from rlar import (
    FrozenTokenizer,
    build_ar_policy,
    build_gpt_policy,
    build_toklip_tokenizer,
    compute_sequence_logprob,
    groupwise_advantages,
    grpo_update,
    reinforce_update,
    sample_codes_with_logprobs,
    sample_multiple_generations,
)
from rlar.api import codebook_embeddings
from rlar.policy.conditioning import as_condition
from rlar.policy.gpt import GPT
from rlar.policy.llamagen import LlamaGen
from rlar.tokenizer.digits_vq import DigitsVQ
from rlar.tokenizer.llamagen_vq import LlamaGenVQ
from rlar.tokenizer.taming_vqgan import TamingVQGAN

V, T, K, G = 16, 12, 4, 3  # vocabulary, tokens per sample, prefix length, generations per item
LABELS = torch.tensor([0, 2])  # of 3 classes


def fresh_policy(guidance_matters: bool = False):
    """The same GPT and AdamW at every call; ``guidance_matters``: class rows far from the null row, as in a trained
    prior, so that a guided distribution differs from the conditional one."""
    torch.manual_seed(0)
    policy, opt = build_ar_policy(V, T, {"type": "gpt", "n_layer": 1, "n_head": 2, "n_embd": 16, "num_classes": 3})
    if guidance_matters:
        with torch.no_grad():
            policy.cls_emb.weight.mul_(50)
    return policy, opt


def rollout(policy, k: int = K, **sampling):
    """G samples of each of LABELS after a k-token prefix: tokens, log-probs ``[2G, T]`` and labels ``[2G]``."""
    prefix = torch.randint(V, (len(LABELS), k), generator=torch.Generator().manual_seed(1))  # [2, k]
    tokens, logp = sample_multiple_generations(policy, (prefix, LABELS), T, G,
                                               generator=torch.Generator().manual_seed(2), **sampling)
    return tokens, logp, LABELS.repeat_interleave(G)


# -- 1. after a rollout with a prefix, the updates train on the sampled tokens only ---------------------------------

@pytest.mark.parametrize("per_token, prefix_len", [(True, None), (True, K), (False, K)])
def test_grpo_right_after_a_prefix_rollout_has_ratios_of_one(per_token, prefix_len):
    policy, opt = fresh_policy()
    tokens, logp, labels = rollout(policy)
    assert logp[:, :K].eq(0).all() and logp[:, K:].ne(0).all()
    old = logp if per_token else logp.sum(1)  # [N, T] or [N]
    advantages = torch.ones(len(tokens))
    loss = grpo_update(policy, opt, tokens, old, advantages, labels=labels, prefix_len=prefix_len)
    assert loss == pytest.approx(-1.0, abs=1e-5)  # -mean(A): every ratio 1


def test_reinforce_after_a_prefix_rollout_leaves_the_prefix_out():
    policy, opt = fresh_policy()
    tokens, logp, labels = rollout(policy)
    rewards = torch.tensor([1.0, 0.0, 0.0, 0.5, 0.0, 0.0])
    adv = groupwise_advantages(rewards, len(rewards))  # [N], standardized over the batch
    loss = reinforce_update(policy, opt, tokens, logp, rewards, labels=labels)
    assert loss == pytest.approx(-(adv * logp.sum(1)).mean().item(), abs=1e-4)  # logp: 0 on the prefix


def test_the_prefix_length_is_checked():
    policy, opt = fresh_policy()
    tokens, logp, labels = rollout(policy)
    with pytest.raises(ValueError, match="nothing was sampled"):  # all-zero log-probs: give prefix_len
        reinforce_update(policy, opt, tokens, torch.zeros_like(logp), torch.rand(len(tokens)), labels=labels)
    with pytest.raises(ValueError, match=f"prefix_len={T} must lie in"):
        grpo_update(policy, opt, tokens, logp, torch.ones(len(tokens)), labels=labels, prefix_len=T)


# -- 2. the updates recompute under the sampler's guidance scale and temperature -----------------------------------

def test_updates_recompute_the_guided_distribution_the_sampler_drew_from():
    sampling = {"cfg_scale": 3.0, "temperature": 0.9}
    policy, opt = fresh_policy(guidance_matters=True)
    tokens, logp, labels = rollout(policy, k=0, **sampling)
    unguided = compute_sequence_logprob(policy, tokens, labels, temperature=0.9)
    assert (unguided - logp).abs().max() > 0.1  # the guidance matters here
    torch.testing.assert_close(compute_sequence_logprob(policy, tokens, labels, **sampling), logp, atol=1e-5, rtol=0)
    assert grpo_update(policy, opt, tokens, logp, torch.ones(len(tokens)), labels=labels,
                       **sampling) == pytest.approx(-1.0, abs=1e-5)
    policy, opt = fresh_policy(guidance_matters=True)
    rewards = torch.arange(len(tokens), dtype=torch.float32)
    adv = groupwise_advantages(rewards, len(rewards))
    loss = reinforce_update(policy, opt, tokens, logp, rewards, labels=labels, **sampling)
    assert loss == pytest.approx(-(adv * logp.sum(1)).mean().item(), abs=1e-4)


# -- 4. policy configs: unknown keys are refused, the seeds' keys work ---------------------------------------------

@pytest.mark.parametrize("cfg, unknown", [
    ({"type": "gpt", "n_layers": 1, "n_embed": 32}, "['n_embed', 'n_layers']"),
    ({"type": "llamagen", "extra": {"dim": 32}, "dim": 32}, "['dim']"),
    ({"type": "llamagen", "use_pretrained_codebook": True}, "['use_pretrained_codebook']"),
])
def test_unknown_policy_keys_are_refused_naming_the_accepted_ones(cfg, unknown):
    with pytest.raises(ValueError, match=rf"unknown key\(s\) {re.escape(unknown)}.*n_embd"):
        build_ar_policy(V, 16, cfg)


def test_build_gpt_policy_refuses_unknown_keys():
    with pytest.raises(ValueError, match=r"build_gpt_policy cfg: unknown key\(s\) \['n_layers'\]; accepted: n_layer"):
        build_gpt_policy(None, V, T, {"n_layers": 1})


def test_the_seeds_policy_dicts_build_what_they_say():
    class MyLlamaGen(LlamaGen):  # the seeds' custom class, with an argument of its own in extra
        def __init__(self, rope: bool = False, **kwargs):
            super().__init__(**kwargs)
            self.rope = rope

    gpt, opt = build_ar_policy(V, T, {"type": "gpt", "cls": GPT, "n_layer": 2, "n_head": 2, "n_embd": 32,
                                      "lr": 2e-4, "extra": {"grad_checkpointing": True}})
    assert (len(gpt.blocks), gpt.n_embd, gpt.grad_checkpointing, opt.param_groups[0]["lr"]) == (2, 32, True, 2e-4)
    llama, _ = build_ar_policy(V, 16, {"type": "llammagen", "cls": MyLlamaGen, "n_layer": 1, "n_head": 2,
                                       "n_embd": 32, "extra": {"rope": True}})
    assert llama.n_embd == 32 and llama.tok_embeddings.weight.shape == (V, 32) and llama.rope
    with pytest.raises(ValueError, match="given twice"):
        build_ar_policy(V, 16, {"type": "llamagen", "n_embd": 32, "extra": {"dim": 64}})


# -- 3. the codebook of every tokenizer rlar builds ------------------------------------------------------------------

DD = {"ch": 32, "ch_mult": [1, 2, 2], "num_res_blocks": 1, "attn_resolutions": [8], "resolution": 32,
      "z_channels": 16, "double_z": False, "in_channels": 3, "out_ch": 3, "dropout": 0.0}


def test_the_pretrained_codebook_may_be_given_as_the_tokenizer():
    from rlar.api import tokenizer_codebook

    torch.manual_seed(0)
    ibq = build_toklip_tokenizer({"ddconfig": DD, "lossconfig": {}, "n_embed": V, "embed_dim": 8})
    taming = FrozenTokenizer(TamingVQGAN(DD, V, 8))
    llamagen = FrozenTokenizer(LlamaGenVQ(32, V, 8, True, ch=32, ch_mult=[1, 2, 2], num_res_blocks=1, z_channels=16))
    digits = FrozenTokenizer(DigitsVQ(codebook_size=V, hidden=16))
    rows = {"ibq": ibq.vq.quantize.embedding.weight, "taming": taming.vq.quantize.embedding.weight,
            "llamagen": F.normalize(llamagen.vq.quantize.embedding.weight, dim=-1),  # what its decoder reads
            "digits": digits.vq.codebook.weight}
    for name, tokenizer in {"ibq": ibq, "taming": taming, "llamagen": llamagen, "digits": digits}.items():
        for given in (tokenizer, tokenizer.vq):
            torch.testing.assert_close(tokenizer_codebook(given), rows[name], msg=name)
            policy, _ = build_gpt_policy(None, V, T, {"n_embd": 8, "n_head": 2, "n_layer": 1,
                                                      "use_pretrained_codebook": True, "codebook": given})
            torch.testing.assert_close(policy.tok_emb.weight.detach(), codebook_embeddings(rows[name], 8), msg=name)
    with pytest.raises(TypeError, match="no codebook known for a Linear"):
        tokenizer_codebook(torch.nn.Linear(2, 2))


# -- 5. the sampler's edge cases -------------------------------------------------------------------------------------

def test_max_len_beyond_block_size_or_below_the_prefix_is_refused():
    policy, _ = fresh_policy()
    with pytest.raises(ValueError, match=f"max_len={T + 1} .*block_size={T}"):
        sample_codes_with_logprobs(policy, (torch.zeros(2, 0, dtype=torch.long), LABELS), T + 1)
    with pytest.raises(ValueError, match="max_len=3 must lie between the prefix's length 4"):
        sample_multiple_generations(policy, (torch.zeros(2, 4, dtype=torch.long), LABELS), 3, 2)


def test_labels_outside_the_classes_are_refused():
    policy, opt = fresh_policy()
    empty = torch.zeros(2, 0, dtype=torch.long)
    with pytest.raises(ValueError, match="class label 3 is out of range: the policy has num_classes=3"):
        sample_codes_with_logprobs(policy, (empty, torch.tensor([0, 3])), T)
    tokens, logp, labels = rollout(policy)
    with pytest.raises(ValueError, match="num_classes=3"):
        compute_sequence_logprob(policy, tokens, labels + 1)
    with pytest.raises(ValueError, match="num_classes=3"):
        reinforce_update(policy, opt, tokens, logp, torch.rand(len(tokens)), labels=labels + 1)
    with pytest.raises(ValueError, match=r"class label -2 is out of range: .*-1 for the null class"):
        sample_codes_with_logprobs(policy, (empty, torch.tensor([-2, 1])), T)


def test_labels_that_are_not_one_per_sequence_are_refused():
    """Three labels for two rows were read as the first two; too few failed deep in the model."""
    policy, opt = fresh_policy()
    with pytest.raises(ValueError, match="3 conditions for 2 sequences: give one per sequence"):
        sample_codes_with_logprobs(policy, (torch.zeros(2, 0, dtype=torch.long), torch.tensor([0, 1, 2])), T)
    tokens, logp, labels = rollout(policy)
    with pytest.raises(ValueError, match=f"{len(labels) - 1} conditions for {len(tokens)} sequences"):
        compute_sequence_logprob(policy, tokens, labels[1:])
    with pytest.raises(ValueError, match="conditions for .* sequences"):
        reinforce_update(policy, opt, tokens, logp, torch.rand(len(tokens)), labels=labels[1:])


def test_labels_may_be_a_python_list():
    policy, opt = fresh_policy()
    empty = torch.zeros(2, 0, dtype=torch.long)
    listed = sample_codes_with_logprobs(policy, (empty, [1, -1]), T, generator=torch.Generator().manual_seed(3))
    tensor = sample_codes_with_logprobs(policy, (empty, torch.tensor([1, -1])), T,
                                        generator=torch.Generator().manual_seed(3))
    assert torch.equal(listed[0], tensor[0]) and torch.equal(listed[1], tensor[1])
    tokens, _ = sample_multiple_generations(policy, (empty, (0, 2)), T, 2)
    assert tokens.shape == (4, T)
    tokens, logp, labels = rollout(policy)  # the log-probs and the updates take a list as the sampler does
    assert torch.equal(compute_sequence_logprob(policy, tokens, labels.tolist()),
                       compute_sequence_logprob(policy, tokens, labels))
    with pytest.raises(ValueError, match="class label 3 is out of range"):
        compute_sequence_logprob(policy, tokens, [3] * len(tokens))
    assert math.isfinite(reinforce_update(policy, opt, tokens, logp, torch.rand(len(tokens)), labels=labels.tolist()))
    with pytest.raises(ValueError, match="class label 3 is out of range"):
        reinforce_update(policy, opt, tokens, logp, torch.rand(len(tokens)), labels=[3] * len(tokens))


def test_a_class_condition_is_checked_as_its_labels_are():
    policy, _ = fresh_policy()
    with pytest.raises(ValueError, match="class label 3 is out of range: the policy has num_classes=3"):
        sample_codes_with_logprobs(policy, (torch.zeros(2, 0, dtype=torch.long), as_condition(torch.tensor([0, 3]))),
                                   T)
