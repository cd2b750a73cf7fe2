"""Under bf16 autocast the samplers keep the KV cache in bf16, in which its keys and values are computed: half the
memory of an fp32 cache, and the same tokens and log-probabilities."""

import pytest
import torch

import rlar.rollout.parallel_decoding
import rlar.rollout.sampling
from rlar.policy.arpg import ARPG
from rlar.policy.gpt import GPT
from rlar.policy.llamagen import LlamaGen
from rlar.rollout.parallel_decoding import sample_parallel
from rlar.rollout.sampling import sample_multiple_generations

LABELS = torch.tensor([0, 1, 4])


def raster(model):
    return sample_multiple_generations(model, (torch.zeros(3, 0, dtype=torch.long), LABELS), 16, 2, temperature=1.0,
                                       cfg_scale=2.0, generator=torch.Generator().manual_seed(1))  # [6, 16] each


def parallel(model):
    s = sample_parallel(model, LABELS, 3, num_iter=4, cfg_scale=2.0, generator=torch.Generator().manual_seed(1))
    return s.tokens, s.logprobs


@pytest.mark.parametrize("build, sample, module", [
    (lambda: GPT(vocab_size=32, block_size=16, num_classes=5, n_layer=2, n_head=2, n_embd=32), raster,
     rlar.rollout.sampling),
    (lambda: LlamaGen(32, 16, 5, n_layer=2, n_head=2, dim=32, multiple_of=32), raster, rlar.rollout.sampling),
    (lambda: ARPG(32, 16, 5, n_layer=4, n_head=2, dim=32, multiple_of=32), parallel, rlar.rollout.parallel_decoding),
], ids=["gpt", "llamagen", "arpg"])
def test_a_bf16_cache_samples_what_an_fp32_cache_samples(monkeypatch, build, sample, module):
    torch.manual_seed(0)
    model = build().eval()
    dtypes = []
    new_cache = model.new_cache

    def recording(batch, device, dtype=None):
        cache = new_cache(batch, device, dtype)
        dtypes.append(cache.keys[0].dtype)
        return cache

    monkeypatch.setattr(model, "new_cache", recording)
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        in_bf16 = sample(model)
        monkeypatch.setattr(module, "cache_dtype", lambda device: None)  # the weights' dtype, as before
        in_fp32 = sample(model)
    assert dtypes == [torch.bfloat16, torch.float32]
    assert torch.equal(in_bf16[0], in_fp32[0]) and torch.equal(in_bf16[1], in_fp32[1])
    with torch.no_grad():  # outside autocast: the weights' dtype
        sample(model)
    assert dtypes[-1] == torch.float32
