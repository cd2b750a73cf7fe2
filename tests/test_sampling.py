import pytest
import torch

from rlar.rollout.sampling import (
    compute_sequence_logprob,
    sample_codes_with_logprobs,
    sample_multiple_generations,
    truncate,
)


@pytest.mark.parametrize("cfg_scale", [1.0, 2.0])
def test_sampler_logprobs_equal_teacher_forced(gpt, cfg_scale):
    prefix = torch.randint(0, 32, (6, 3))
    labels = torch.tensor([0, 1, 2, 3, 4, -1])  # -1: the null class
    g = torch.Generator().manual_seed(0)
    tokens, logp = sample_codes_with_logprobs(gpt, (prefix, labels), 12, temperature=0.7, cfg_scale=cfg_scale,
                                              generator=g)
    assert tokens.shape == logp.shape == (6, 12)
    assert torch.equal(tokens[:, :3], prefix)
    assert (logp[:, :3] == 0).all() and (logp[:, 3:] < 0).all()
    recomputed = compute_sequence_logprob(gpt, tokens, labels, temperature=0.7, cfg_scale=cfg_scale)
    assert (recomputed[:, 3:] - logp[:, 3:]).abs().max() <= 1e-5


def test_kv_cache_matches_naive_recompute(gpt):
    start = (torch.zeros(4, 0, dtype=torch.long), torch.tensor([0, 1, 2, 3]))
    cached = sample_codes_with_logprobs(gpt, start, 12, generator=torch.Generator().manual_seed(3))
    naive = sample_codes_with_logprobs(gpt, start, 12, generator=torch.Generator().manual_seed(3), use_cache=False)
    assert torch.equal(cached[0], naive[0])
    assert torch.allclose(cached[1], naive[1], atol=1e-5)


@pytest.mark.parametrize("cfg_scale", [1.0, 2.0])
def test_a_prefix_as_long_as_the_sequence_is_returned_without_running_the_policy(gpt, cfg_scale, monkeypatch):
    prefix = torch.randint(0, 32, (3, 12))  # [3, block_size]
    monkeypatch.setattr(gpt, "forward", None)  # never called
    monkeypatch.setattr(gpt, "prefill", None)
    tokens, logp = sample_codes_with_logprobs(gpt, (prefix, torch.tensor([0, 1, -1])), 12, cfg_scale=cfg_scale)
    assert torch.equal(tokens, prefix) and tokens is not prefix
    assert logp.dtype == torch.float32 and torch.equal(logp, torch.zeros(3, 12))


def test_class_condition_changes_the_distribution(gpt):
    tokens = torch.randint(0, 32, (2, 12))
    a = compute_sequence_logprob(gpt, tokens, torch.tensor([0, 0]))
    b = compute_sequence_logprob(gpt, tokens, torch.tensor([1, 1]))
    assert not torch.allclose(a, b)


def test_top_k_and_top_p_restrict_the_draw():
    logp = torch.log_softmax(torch.tensor([[3.0, 2.0, 1.0, 0.0, -1.0]]), -1)
    assert torch.isfinite(truncate(logp, 2, None)).sum() == 2
    probs = logp.exp()[0]  # 0.64, 0.23, 0.09, ...: top_p=0.8 keeps the first two
    assert probs[0] < 0.8 < probs[0] + probs[1]
    kept = torch.isfinite(truncate(logp, None, 0.8))[0]
    assert kept.tolist() == [True, True, False, False, False]


def test_top_k_sampling_draws_only_top_tokens(gpt):
    start = (torch.zeros(8, 0, dtype=torch.long), torch.zeros(8, dtype=torch.long))
    tokens, logp = sample_codes_with_logprobs(gpt, start, 12, top_k=1, generator=torch.Generator().manual_seed(0))
    greedy = compute_sequence_logprob(gpt, tokens, start[1])
    full = torch.log_softmax(gpt(tokens, start[1]), -1)
    assert torch.equal(full.argmax(-1), tokens)  # top_k=1 is greedy
    assert torch.allclose(greedy, logp, atol=1e-5)  # log-probs are under the untruncated distribution


def test_multiple_generations_keep_groups_adjacent(gpt):
    prefix = torch.randint(0, 32, (3, 2))
    tokens, logp = sample_multiple_generations(gpt, (prefix, torch.tensor([0, 1, 2])), 12, 4,
                                               generator=torch.Generator().manual_seed(0))
    assert tokens.shape == (12, 12)
    assert torch.equal(tokens[:, :2], prefix.repeat_interleave(4, 0))


def test_bad_temperature_is_refused(gpt):
    with pytest.raises(ValueError, match="temperature"):
        sample_codes_with_logprobs(gpt, torch.zeros(1, 0, dtype=torch.long), 4, temperature=0)
