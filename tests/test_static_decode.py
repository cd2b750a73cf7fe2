"""The static-shape decode step (``hardware.compile_decode``): the same samples as the eager KV-cached sampler."""

import copy

import pytest
import torch

from rlar.policy.gpt import GPT
from rlar.policy.llamagen import LlamaGen
from rlar.rollout.sampling import sample_codes_with_logprobs
from rlar.rollout.static_decode import StaticDecode, use_static_decode
from rlar.runtime.hardware import Hardware


def tiny_gpt() -> GPT:
    torch.manual_seed(0)
    return GPT(vocab_size=32, block_size=16, num_classes=5, n_layer=2, n_head=2, n_embd=32).eval()


def tiny_llamagen() -> LlamaGen:
    torch.manual_seed(0)
    model = LlamaGen(32, 16, 5, n_layer=2, n_head=2, dim=32, multiple_of=32).eval()
    torch.nn.init.normal_(model.output.weight, std=0.3)  # LlamaGen zero-inits it: logits would be constant
    return model


def samples(policy, cfg_scale: float, seed: int = 1):
    """Tokens and log-probs ``[6, 16]`` after a 3-token prefix, one of the rows unconditional."""
    prefix = torch.randint(0, 32, (6, 3), generator=torch.Generator().manual_seed(0))
    labels = torch.tensor([0, 1, 2, 3, 4, -1])
    return sample_codes_with_logprobs(policy, (prefix, labels), 16, cfg_scale=cfg_scale,
                                      generator=torch.Generator().manual_seed(seed))


def assert_same_samples(reference, static):
    """Same tokens; log-probs equal up to fp32 rounding (attention over all slots sums in another order)."""
    assert torch.equal(reference[0], static[0])
    assert (reference[1] - static[1]).abs().max() <= 2e-6


@pytest.mark.parametrize("make", [tiny_gpt, tiny_llamagen])
@pytest.mark.parametrize("cfg_scale", [1.0, 2.0])
def test_static_step_samples_what_the_eager_cache_samples(make, cfg_scale):
    eager = make()
    static = copy.deepcopy(eager)
    use_static_decode(static)
    for seed in (1, 2):  # the second call reuses the cache, whose old slots must stay masked
        assert_same_samples(samples(eager, cfg_scale, seed), samples(static, cfg_scale, seed))


def test_static_step_gives_the_eager_step_logits_at_every_position():
    policy = tiny_gpt()
    decode = StaticDecode(policy)
    labels, prefix = torch.tensor([1, 2]), torch.tensor([[3, 4], [5, 6]])
    eager_cache, static_cache = policy.new_cache(2, "cpu"), decode.new_cache(2, "cpu")
    policy.prefill(labels, prefix, eager_cache)
    policy.prefill(labels, prefix, static_cache)
    for token in torch.randint(0, 32, (13, 2)):
        expected = policy.step(token, eager_cache)  # [2, V]
        got = decode.step(token, static_cache)
        assert torch.allclose(expected, got, atol=1e-6, rtol=0)
    assert eager_cache.length == static_cache.length == 16


def test_a_cache_is_reused_per_batch_size():
    decode = StaticDecode(tiny_gpt())
    first = decode.new_cache(4, "cpu")
    first.length = 7
    again = decode.new_cache(4, "cpu")
    assert again is first and again.length == 0
    assert decode.new_cache(2, "cpu") is not first


def test_a_rollout_that_overflowed_leaves_nothing_in_the_reused_cache():
    policy = tiny_gpt()
    use_static_decode(policy)
    key = policy.blocks[0].attn.key.weight
    finite = key.detach().clone()
    with torch.no_grad():
        key[0, 0] = float("inf")  # one rollout whose activations overflow
    assert not samples(policy, 2.0)[1].isfinite().all()
    with torch.no_grad():
        key.copy_(finite)
    after = samples(policy, 2.0)  # the same cache, its masked slots once NaN
    fresh = tiny_gpt()
    use_static_decode(fresh)
    assert after[1].isfinite().all()
    assert_same_samples(samples(fresh, 2.0), after)


def test_compile_decode_swaps_the_step_and_the_default_keeps_it():
    default, switched = tiny_gpt(), tiny_gpt()
    Hardware().prepare(default)
    Hardware(compile_decode=True).prepare(switched)
    assert "step" not in vars(default)  # the class's eager step
    assert isinstance(switched.step.__self__, StaticDecode) and switched.step.__self__.compile_mode == "default"


def test_compile_decode_refuses_fsdp():
    with pytest.raises(ValueError, match="compile_decode"):
        Hardware(strategy="fsdp", compile_decode=True)


@pytest.mark.slow  # compiling the step with inductor takes about a minute on a 2-core CPU
def test_compiled_step_samples_what_the_eager_cache_samples():
    eager = tiny_gpt()
    compiled = copy.deepcopy(eager)
    Hardware(compile_decode=True).prepare(compiled)
    for seed in (1, 2):  # the second call reuses the compiled step and the cache
        assert_same_samples(samples(eager, 1.0, seed), samples(compiled, 1.0, seed))
