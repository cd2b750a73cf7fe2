"""The memory options (docs/distributed.md, memory): micro-batched rollouts, activation checkpointing of the update
pass, and the KL reference kept on the CPU, each computing what the default computes."""

import pytest
import torch

from rlar.config.store import compose_config
from rlar.policy.arpg import ARPG
from rlar.policy.gpt import GPT
from rlar.rollout.collect import collect_rollout

V, T, C = 32, 16, 5  # vocabulary, image tokens (a 4x4 grid), classes


def tiny_gpt() -> GPT:
    torch.manual_seed(0)
    return GPT(V, T, C, n_layer=2, n_head=2, n_embd=32)


def tiny_arpg() -> ARPG:
    torch.manual_seed(0)
    arpg = ARPG(V, T, C, n_layer=2, n_head=2, dim=32, multiple_of=32)
    torch.nn.init.normal_(arpg.head.weight, std=0.3)  # zero-initialised otherwise: constant logits
    return arpg


def rollout_of(policy, mode: str, extra: list[str], micro_batch_size: int | None):
    """A guided rollout of 3 items x G=3 (9 rows) from seed 0, decoded ``micro_batch_size`` rows at a time."""
    cfg = compose_config([f"rollout.mode={mode}", "rollout.cfg_scale=2.0", *extra,
                          f"rollout.micro_batch_size={'null' if micro_batch_size is None else micro_batch_size}"])
    codes = torch.randint(V, (3, T), generator=torch.Generator().manual_seed(0))
    generator = torch.Generator().manual_seed(0)
    rollout = collect_rollout(policy, codes, torch.tensor([0, 1, 2]), 3, cfg.rollout, generator)
    return rollout, generator.get_state()


@pytest.mark.parametrize("mode,extra", [
    ("autoregressive", ["rollout.top_k=8", "rollout.label_dropout=0.5", "rollout.temperature=0.8"]),
    ("prefix", ["rollout.prefix_len=4", "rollout.top_p=0.9"]),
    ("parallel", ["policy=arpg", "rollout.num_iter=5"]),
])
@pytest.mark.parametrize("micro_batch_size", [1, 2, 4])
def test_a_micro_batched_rollout_is_the_one_batch_rollout(mode, extra, micro_batch_size):
    """Same seed, same tokens, log-probs and stream state after, for chunks that do and do not divide the 9 rows.
    In float64 the policy's kernels round the same whatever the batch size (in fp32 a GEMM's blocking, which
    depends on the rows, moves the last bit), so the fp32 log-probs are compared exactly."""
    policy = (tiny_arpg() if mode == "parallel" else tiny_gpt()).double().eval()
    whole, whole_state = rollout_of(policy, mode, extra, None)
    chunked, chunked_state = rollout_of(policy, mode, extra, micro_batch_size)
    assert torch.equal(chunked.tokens, whole.tokens) and torch.equal(chunked.logprobs, whole.logprobs)
    assert torch.equal(chunked_state, whole_state)
    if whole.schedule is not None:
        assert torch.equal(chunked.schedule["orders"], whole.schedule["orders"])


@pytest.mark.parametrize("mode,extra", [("autoregressive", []), ("parallel", ["policy=arpg", "rollout.num_iter=5"])])
def test_a_micro_batched_fp32_rollout_draws_the_same_tokens(mode, extra):
    policy = (tiny_arpg() if mode == "parallel" else tiny_gpt()).eval()
    whole, _ = rollout_of(policy, mode, extra, None)
    chunked, _ = rollout_of(policy, mode, extra, 2)
    assert torch.equal(chunked.tokens, whole.tokens)
    torch.testing.assert_close(chunked.logprobs, whole.logprobs, atol=1e-5, rtol=0)


def test_micro_batch_size_must_be_positive():
    with pytest.raises(ValueError, match="rollout.micro_batch_size must be >= 1"):
        rollout_of(tiny_gpt().eval(), "autoregressive", [], 0)


def gradients(policy, grad_checkpointing: bool):
    """The gradients of a guided teacher-forced loss (the update's pass), and how many times the blocks ran."""
    from rlar.algorithm.update import rollout_logprobs
    from rlar.rollout.parallel_decoding import step_sizes

    policy.grad_checkpointing = grad_checkpointing
    blocks = policy.layers if isinstance(policy, ARPG) else policy
    blocks.grad_checkpointing = grad_checkpointing
    calls = []
    hooks = [m.register_forward_pre_hook(lambda *_: calls.append(1)) for m in blocks.modules() if m.__class__.__name__
             in ("Block", "TransformerBlock")]
    tokens = torch.randint(V, (4, T), generator=torch.Generator().manual_seed(1))
    labels = torch.tensor([0, 1, 2, -1])
    schedule = None
    if isinstance(policy, ARPG):
        sizes = step_sizes(T, 5)
        orders = torch.rand(4, T, generator=torch.Generator().manual_seed(2)).argsort(1)
        schedule = {"orders": orders, "step_sizes": sizes, "cfg_scales": torch.full((len(sizes),), 2.0)}
    sampling = {"temperature": 0.7, "cfg_scale": torch.full((T,), 2.0)}
    torch.manual_seed(3)  # dropout's stream: the same masks in both runs
    policy.train().zero_grad()
    logp, _ = rollout_logprobs(policy, tokens, labels, sampling, schedule)
    logp.gather(-1, tokens[..., None]).mean().backward()
    for h in hooks:
        h.remove()
    return {k: p.grad.clone() for k, p in policy.named_parameters() if p.grad is not None}, len(calls)


def tiny_llamagen():
    from rlar.policy.llamagen import LlamaGen

    torch.manual_seed(0)
    llamagen = LlamaGen(V, T, C, n_layer=2, n_head=2, dim=32, multiple_of=32, dropout=0.1)
    torch.nn.init.normal_(llamagen.output.weight, std=0.3)
    return llamagen


@pytest.mark.parametrize("build", [lambda: GPT(V, T, C, n_layer=2, n_head=2, n_embd=32, dropout=0.1), tiny_llamagen,
                                   tiny_arpg], ids=["gpt", "llamagen", "arpg"])
def test_grad_checkpointing_gives_the_same_gradients(build):
    torch.manual_seed(0)
    policy = build()
    plain, plain_calls = gradients(policy, False)
    checkpointed, checkpointed_calls = gradients(policy, True)
    assert checkpointed_calls == 2 * plain_calls > 0  # each block ran again in the backward pass
    assert plain.keys() == checkpointed.keys() and len(plain) == len(list(policy.parameters()))
    for k in plain:
        torch.testing.assert_close(checkpointed[k], plain[k], atol=1e-6, rtol=0)


def test_grad_checkpointing_is_an_option_of_every_policy_off_by_default():
    for policy in ("gpt", "llamagen", "arpg"):
        cfg = compose_config([f"policy={policy}", "policy.grad_checkpointing=true"])
        assert cfg.policy.grad_checkpointing is True
    assert compose_config([]).policy.grad_checkpointing is False


def update_with_reference(on_cpu: bool):
    """Two epochs of GRPO with a KL term (the policy moves away from the reference); the stats, the trained
    weights, and the devices the reference's weights were on during its forward passes and after the update."""
    import copy

    from rlar.algorithm.algorithms import GRPO
    from rlar.algorithm.update import policy_update
    from rlar.runtime.data_parallel import wrap

    policy = tiny_gpt()
    reference = copy.deepcopy(policy).eval().requires_grad_(False)
    seen = []
    reference.register_forward_pre_hook(lambda module, _: seen.append(module.head.weight.device))
    ref = wrap(reference, "none", torch.device("cpu"), trainable=False, on_cpu=on_cpu)
    algo = GRPO(num_generations=4, minibatch_size=8, epochs=2, beta=0.1)
    labels = torch.tensor([0, 1, 2, 3])
    rollout = collect_rollout(policy.eval(), torch.randint(V, (4, T), generator=torch.Generator().manual_seed(0)),
                              labels, 4, compose_config(["rollout.cfg_scale=2.0"]).rollout,
                              torch.Generator().manual_seed(0))
    adv, _, _ = algo.advantages(torch.randn(16, generator=torch.Generator().manual_seed(1)),
                                labels.repeat_interleave(4))
    optimizer = torch.optim.AdamW(policy.parameters(), lr=1e-2)
    stats = policy_update(policy, optimizer, algo, rollout, adv, {"temperature": 1.0, "cfg_scale": 2.0}, 1.0,
                          torch.Generator().manual_seed(0), ref_policy=ref)
    return stats, policy.state_dict(), ref, seen, reference.head.weight.device


def test_a_reference_on_the_cpu_gives_the_same_loss_and_kl():
    """On this CPU-only machine the moves are to and from the CPU: the test runs the offloaded path (a call on
    the input's device, back to the CPU after) and checks that it computes exactly what the resident one does."""
    from rlar.runtime.offload import CPUResident

    stats, weights, ref, seen, _ = update_with_reference(on_cpu=False)
    offloaded_stats, offloaded_weights, offloaded_ref, offloaded_seen, home = update_with_reference(on_cpu=True)
    assert not isinstance(ref, CPUResident) and isinstance(offloaded_ref, CPUResident)
    assert stats["loss/kl"] > 0 and offloaded_stats == stats  # every minibatch's KL and loss, exactly
    assert all(torch.equal(offloaded_weights[k], weights[k]) for k in weights)
    assert len(offloaded_seen) == stats["policy/minibatches"] == 4  # one call (and move) per minibatch
    assert set(offloaded_seen) == {torch.device("cpu")} and home == torch.device("cpu")


def test_an_offloaded_reference_runs_on_its_inputs_device_and_keeps_its_cpu_weights():
    """Each call runs the module with copies of its weights on the input's device (here the meta device, which holds
    no data: a copy back from it would fail) and leaves the CPU weights as they were."""
    from rlar.runtime.offload import CPUResident

    torch.manual_seed(0)
    linear = torch.nn.Linear(4, 3)
    before = {k: v.clone() for k, v in linear.state_dict().items()}
    resident = CPUResident(linear)
    out = resident(torch.empty(2, 4, device="meta"))
    assert out.device.type == "meta" and out.shape == (2, 3)
    assert all(t.device.type == "cpu" for t in resident.parameters())
    assert all(torch.equal(linear.state_dict()[k], v) for k, v in before.items())
