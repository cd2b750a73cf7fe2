"""Text-conditioned policies (GPT with caption prefix tokens or cross-attention, LlamaGen-T2I): the sampler's
log-probs are the teacher-forced recompute's under guidance, padded caption tokens and the features of null rows are
never read, the null caption is the learned one, the KV cache and the static step match the full pass, and the
update's first ratio is 1 with text conditions and guidance in every raster rollout mode."""

import copy

import pytest
import torch

from rlar.algorithm.algorithms import GRPO, PPO
from rlar.algorithm.update import policy_update
from rlar.config.store import compose_config
from rlar.policy.conditioning import Condition
from rlar.policy.gpt import GPT
from rlar.policy.llamagen import LlamaGen
from rlar.rollout.collect import collect_rollout
from rlar.rollout.sampling import cfg_scales, policy_logprobs, sample_codes_with_logprobs
from rlar.rollout.static_decode import use_static_decode

V, T, L, E = 32, 16, 5, 12
KINDS = ["gpt", "gpt_cross", "llamagen"]


def text_policy(kind: str):
    torch.manual_seed(0)
    if kind == "llamagen":
        policy = LlamaGen(vocab_size=V, block_size=T, n_layer=2, n_head=2, dim=32, caption_dim=E, cls_token_num=L)
        torch.nn.init.normal_(policy.output.weight, std=0.5)  # released init is zero: uniform logits test nothing
        return policy.eval()
    mode = "cross_attention" if kind == "gpt_cross" else "prefix"
    policy = GPT(vocab_size=V, block_size=T, n_layer=2, n_head=2, n_embd=32, caption_dim=E, condition_tokens=L,
                 condition_mode=mode)
    torch.nn.init.normal_(policy.cond_pos_emb, std=0.5)
    return policy.eval()


def captions(n: int = 4, seed: int = 0) -> Condition:
    """``n`` captions of 3, 5, 1, 4, ... tokens (left-padded, zeros at padding), one null row."""
    g = torch.Generator().manual_seed(seed)
    lengths = torch.tensor([3, 5, 1, 4, 2, 5, 3, 1])[:n]
    mask = torch.arange(L)[None, :] >= (L - lengths)[:, None]  # [n, L]
    text = torch.randn(n, L, E, generator=g) * mask[..., None]
    null = torch.zeros(n, dtype=torch.bool)
    null[2] = True
    return Condition(torch.arange(n), text, mask, null)


def logits_of(policy, tokens, condition):
    with torch.no_grad():
        return policy(tokens, condition)


@pytest.mark.parametrize("cfg_scale", [1.0, 2.5])
@pytest.mark.parametrize("kind", KINDS)
def test_sampler_logprobs_equal_the_teacher_forced_recompute(kind, cfg_scale):
    policy, cond = text_policy(kind), captions()
    start = (torch.zeros(4, 0, dtype=torch.long), cond)
    tokens, logp = sample_codes_with_logprobs(policy, start, T, temperature=0.7, cfg_scale=cfg_scale,
                                              generator=torch.Generator().manual_seed(0))
    naive, naive_logp = sample_codes_with_logprobs(policy, start, T, temperature=0.7, cfg_scale=cfg_scale,
                                                   generator=torch.Generator().manual_seed(0), use_cache=False)
    with torch.no_grad():
        full, _ = policy_logprobs(policy, tokens, cond, 0.7, cfg_scale)
    assert torch.equal(tokens, naive)  # the KV cache reads what the full pass reads
    assert (logp - naive_logp).abs().max() <= 1e-5
    assert (logp - full.gather(-1, tokens[..., None])[..., 0]).abs().max() <= 1e-5


def test_micro_batches_sample_what_one_batch_samples():
    policy, cond = text_policy("gpt"), captions(8)
    start = (torch.zeros(8, 0, dtype=torch.long), cond)
    whole = sample_codes_with_logprobs(policy, start, T, cfg_scale=2.0, generator=torch.Generator().manual_seed(4))
    parts = sample_codes_with_logprobs(policy, start, T, cfg_scale=2.0, generator=torch.Generator().manual_seed(4),
                                       micro_batch_size=3)
    assert torch.equal(whole[0], parts[0]) and (whole[1] - parts[1]).abs().max() <= 1e-5


@pytest.mark.parametrize("kind", KINDS)
def test_padded_tokens_and_null_rows_are_not_read_and_captions_are(kind):
    policy, cond = text_policy(kind), captions()
    tokens = torch.randint(0, V, (4, T), generator=torch.Generator().manual_seed(1))
    base = logits_of(policy, tokens, cond)
    noise = torch.randn(cond.text.shape, generator=torch.Generator().manual_seed(2))
    padded = Condition(cond.labels, cond.text + noise * ~cond.mask[..., None], cond.mask, cond.null)
    assert torch.allclose(logits_of(policy, tokens, padded), base, atol=1e-6)
    null_row = cond.text.clone()
    null_row[2] += noise[2]
    assert torch.allclose(logits_of(policy, tokens, Condition(cond.labels, null_row, cond.mask, cond.null)), base,
                          atol=1e-6)
    read = cond.text.clone()
    read[0, -1] += 1.0  # a caption token of row 0
    moved = (logits_of(policy, tokens, Condition(cond.labels, read, cond.mask, cond.null)) - base).abs()
    assert moved[0].max() > 1e-5 and moved[1:].max() == 0  # rows do not read each other


@pytest.mark.parametrize("kind", KINDS)
def test_null_rows_read_the_learned_null_caption(kind):
    policy, cond = text_policy(kind), captions()
    tokens = torch.randint(0, V, (4, T), generator=torch.Generator().manual_seed(1))
    name = ("cls_embedding" if kind == "llamagen" else "caption") + ".uncond_embedding"
    uncond = dict(policy.named_parameters())[name]  # a parameter: learned
    assert uncond.shape == (L, E)
    as_features = cond.text.clone()
    as_features[2] = uncond.detach()
    spelled_out = Condition(cond.labels, as_features, cond.mask, torch.zeros(4, dtype=torch.bool))
    assert torch.allclose(logits_of(policy, tokens, spelled_out)[2], logits_of(policy, tokens, cond)[2], atol=1e-6)


@pytest.mark.parametrize("kind", KINDS)
def test_logits_t_read_only_the_condition_and_the_tokens_before_t(kind):
    policy, cond = text_policy(kind), captions()
    tokens = torch.randint(0, V, (4, T), generator=torch.Generator().manual_seed(1))
    base = logits_of(policy, tokens, cond)
    changed = tokens.clone()
    changed[:, 6] = (changed[:, 6] + 1) % V
    after = logits_of(policy, changed, cond)
    assert torch.allclose(after[:, :7], base[:, :7], atol=1e-6)
    assert (after[:, 7:] - base[:, 7:]).abs().max() > 1e-4


@pytest.mark.parametrize("kind", KINDS)
def test_static_step_samples_what_the_eager_cache_samples(kind):
    policy, cond = text_policy(kind), captions()
    start = (torch.zeros(4, 0, dtype=torch.long), cond)
    eager = sample_codes_with_logprobs(policy, start, T, temperature=0.8, cfg_scale=2.0,
                                       generator=torch.Generator().manual_seed(3))
    use_static_decode(policy)
    static = sample_codes_with_logprobs(policy, start, T, temperature=0.8, cfg_scale=2.0,
                                        generator=torch.Generator().manual_seed(3))
    assert torch.equal(eager[0], static[0])
    assert (eager[1] - static[1]).abs().max() <= 1e-5


def test_class_gpt_with_cross_attention_reads_its_class():
    torch.manual_seed(0)
    policy = GPT(vocab_size=V, block_size=T, num_classes=3, n_layer=2, n_head=2, n_embd=32,
                 condition_mode="cross_attention").eval()
    labels = torch.tensor([0, 1, 2, -1])
    tokens, logp = sample_codes_with_logprobs(policy, (torch.zeros(4, 0, dtype=torch.long), labels), T,
                                              cfg_scale=2.0, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        full, _ = policy_logprobs(policy, tokens, labels, 1.0, 2.0)
    assert (logp - full.gather(-1, tokens[..., None])[..., 0]).abs().max() <= 1e-5
    same = torch.zeros(2, T, dtype=torch.long)
    assert (logits_of(policy, same, torch.tensor([0, 1]))[0] - logits_of(policy, same, torch.tensor([0, 1]))[1]
            ).abs().max() > 1e-4
    assert "blocks.0.cross_attn.key.weight" in policy.state_dict() and "sos_emb" in policy.state_dict()


MODES = [("autoregressive", []), ("prefix", ["rollout.prefix_len=5"]), ("teacher_forced", []),
         ("autoregressive", ["rollout.cfg_interval=[0.25,0.75]"])]


@pytest.mark.parametrize("mode,extra", MODES)
@pytest.mark.parametrize("algorithm", ["grpo", "ppo"])
@pytest.mark.parametrize("kind", KINDS)
def test_first_inner_epoch_ratio_is_one_with_text_guidance_and_caption_dropout(kind, algorithm, mode, extra):
    cfg = compose_config([f"rollout.mode={mode}", "rollout.cfg_scale=2.0", "rollout.temperature=0.7",
                          "rollout.label_dropout=0.3", "rollout.token_noise_prob=0.1", *extra])
    policy = text_policy(kind)
    ref = copy.deepcopy(policy).requires_grad_(False)
    kl = {"beta": 0.1, "ntp_weight": 0.1}  # the KL reference and the NTP term read the same conditions
    algo = (PPO(num_generations=4, minibatch_size=8, epochs=2, **kl) if algorithm == "ppo"
            else GRPO(num_generations=4, minibatch_size=8, **kl))
    gt = torch.randint(0, V, (4, T), generator=torch.Generator().manual_seed(1))
    rollout = collect_rollout(policy, gt, captions(), 4, cfg.rollout, torch.Generator().manual_seed(0))
    assert rollout.condition.is_text and len(rollout.condition) == 16
    assert rollout.condition.null.any() and not rollout.condition.null.all()  # dropped and kept captions
    adv, _, _ = algo.advantages(torch.randn(16, generator=torch.Generator().manual_seed(2)),
                                torch.arange(4).repeat_interleave(4))
    sampling = {"temperature": 0.7, "cfg_scale": cfg_scales(T, 2.0, cfg.rollout.cfg_interval)}
    before = copy.deepcopy(policy.state_dict())
    optimizer = torch.optim.AdamW(policy.parameters(), lr=1e-2)
    stats = policy_update(policy, optimizer, algo, rollout, adv, sampling, 1.0, torch.Generator().manual_seed(0),
                          ref_policy=ref)
    assert stats["policy/ratio_max_abs_dev"] <= 1e-5
    assert stats["loss/kl"] >= 0 and "loss/ntp" in stats
    uncond = ("cls_embedding" if kind == "llamagen" else "caption") + ".uncond_embedding"
    assert not torch.equal(before[uncond], policy.state_dict()[uncond])  # the null caption learns (guided rows)
