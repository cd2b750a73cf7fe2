"""Random draws valid on every device: the loop's CPU streams are never handed a tensor to read.

PyTorch refuses a CPU ``torch.Generator`` for a CUDA tensor, so a random op that reads a tensor (``multinomial``,
``bernoulli``, ``normal(mean, std)``) with the loop's streams works on the CPU and fails at the first token on a GPU.
On a CPU-only machine every tensor is on the generator's device, so the guard below checks the rule by its shape: a
random op given a generator reads no tensor and places its result on the generator's device.
"""

import pytest
import torch
from torch.overrides import TorchFunctionMode

from rlar.config.store import compose_config
from rlar.config.validate import check_config
from rlar.loop import train_rl_loop
from rlar.policy.arpg import ARPG
from rlar.rollout import draws
from rlar.rollout.collect import collect_rollout
from rlar.schedule.decoder import ScheduleDecoder


class StreamsStayOnTheirDevice(TorchFunctionMode):
    """Fails any random op that is handed a generator together with a tensor, or asked for another device."""

    def __init__(self):
        super().__init__()
        self.draws = 0

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        generator = kwargs.get("generator")
        if generator is not None:
            name = getattr(func, "__name__", str(func))
            if any(isinstance(a, torch.Tensor) for a in (*args, *kwargs.values())):
                raise AssertionError(f"{name} reads a tensor with a {generator.device} generator: it fails on another "
                                     "device; draw uniforms with rlar.rollout.draws instead")
            device = kwargs.get("device")
            if device is not None and torch.device(device) != generator.device:
                raise AssertionError(f"{name} places a {generator.device} stream's draw on {device}")
            self.draws += 1
        return func(*args, **kwargs)


def test_the_guard_refuses_a_generator_next_to_a_tensor():
    g = torch.Generator().manual_seed(0)
    with StreamsStayOnTheirDevice(), pytest.raises(AssertionError, match="multinomial reads a tensor"):
        torch.multinomial(torch.ones(2, 3), 1, generator=g)
    with StreamsStayOnTheirDevice() as guard:
        draws.categorical(torch.ones(2, 3), g)
    assert guard.draws == 1


def test_categorical_draws_each_code_with_its_probability():
    probs = torch.tensor([[0.1, 0.0, 0.6, 0.3, 0.0]]).expand(200_000, 5) * 7  # unnormalised rows
    codes = draws.categorical(probs, torch.Generator().manual_seed(0))
    assert codes.shape == (200_000, 1) and codes.dtype == torch.long
    freq = torch.bincount(codes[:, 0], minlength=5).float() / len(codes)
    assert freq[1] == 0 and freq[4] == 0  # no mass: never drawn
    assert torch.allclose(freq, torch.tensor([0.1, 0.0, 0.6, 0.3, 0.0]), atol=0.005)


def test_a_uniform_rounded_to_the_end_of_the_cdf_draws_the_last_code_with_mass(monkeypatch):
    monkeypatch.setattr(draws, "uniforms", lambda shape, generator, device: torch.ones(shape, device=device))
    probs = torch.tensor([[0.2, 0.8, 0.0, 0.0], [0.0, 0.0, 0.0, 1.0], [1.0, 0.0, 0.0, 0.0]])
    assert draws.categorical(probs, None)[:, 0].tolist() == [1, 3, 0]


def test_the_same_stream_gives_the_same_draws_wherever_the_probabilities_live():
    probs = torch.rand(64, 50, generator=torch.Generator().manual_seed(1))
    here = draws.categorical(probs, torch.Generator().manual_seed(2))
    device = "cuda" if torch.cuda.is_available() else "meta"
    if device == "meta":  # no GPU: the uniforms still come from the CPU stream, whatever the target device
        u = draws.uniforms((64, 1), torch.Generator().manual_seed(2), "meta")
        assert u.device.type == "meta"
        return
    there = draws.categorical(probs.to(device), torch.Generator().manual_seed(2)).cpu()
    assert (here == there).float().mean() >= 0.99  # equal up to floating-point ties in the CDF


V, T, C = 32, 16, 5  # vocabulary, image tokens (a 4x4 grid), classes


def tiny_arpg() -> ARPG:
    torch.manual_seed(0)
    arpg = ARPG(V, T, C, n_layer=2, n_head=2, dim=32, multiple_of=32).eval()
    torch.nn.init.normal_(arpg.head.weight, std=0.3)  # zero-initialised otherwise: constant logits
    return arpg


@pytest.mark.parametrize("mode,extra", [
    ("autoregressive", ["rollout.label_dropout=0.5", "rollout.top_k=8"]),
    ("prefix", ["rollout.prefix_len=4", "rollout.token_noise_prob=0.3"]),
    ("teacher_forced", ["rollout.token_noise_prob=0.3", "rollout.top_p=0.9"]),
    ("parallel", ["policy=arpg", "rollout.num_iter=4"]),
    ("schedule", ["experiment=arpg_schedule"]),
])
def test_every_rollout_mode_draws_only_from_device_safe_streams(gpt, mode, extra):
    rollout_cfg = compose_config([f"rollout.mode={mode}", "rollout.cfg_scale=2.0", *extra]).rollout
    policy = {"parallel": tiny_arpg(), "schedule": ScheduleDecoder(tiny_arpg(), max_steps=4, max_degree=4, hidden=16)
              }.get(mode, gpt)
    codes = torch.randint(V, (3, policy.block_size), generator=torch.Generator().manual_seed(0)) % policy.vocab_size
    with StreamsStayOnTheirDevice() as guard:
        rollout = collect_rollout(policy, codes, torch.tensor([0, 1, 2]), 2, rollout_cfg,
                                  torch.Generator().manual_seed(0))
    assert guard.draws > 0 and rollout.tokens.shape == (6, policy.block_size)


@pytest.mark.slow
@pytest.mark.parametrize("extra", [
    ["train.warmup_steps=1", "eval.guided_cfg_scale=2.0", "rollout.label_dropout=0.3"],
    ["experiment=arpg_schedule", "eval.classifier_model.train.steps=20", "schedule.max_steps=4",
     "reward.components.perceptual_digits.classifier.train.steps=20",
     "reward.components.efficiency.target=3"],
])
def test_a_run_draws_only_from_device_safe_streams(tiny, tmp_path, extra):
    """Warm-up, evaluation (free-running and guided) and RL iterations, for a token policy and a learned schedule."""
    cfg = compose_config([*tiny, "eval.max_items=4", *extra])
    check_config(cfg)
    with StreamsStayOnTheirDevice() as guard:
        train_rl_loop(cfg, tmp_path)
    assert guard.draws > 0


def test_a_checkpoint_keeps_and_restores_the_gpu_generator(monkeypatch):
    """On a GPU a checkpoint keeps the CUDA generator's state (ARPG's training orders draw from it), and a resume on
    a GPU sets it back; a run on the CPU keeps none (and starts no CUDA). The CUDA calls are stood in for here."""
    from rlar.runtime.random_streams import gather_rng, rank_generators, restore_rng

    gens = rank_generators(0, 0)
    assert "cuda" not in gather_rng(gens) or torch.cuda.is_initialized()
    gpu_state, restored = torch.arange(16, dtype=torch.uint8), []
    monkeypatch.setattr(torch.cuda, "is_initialized", lambda: True)
    monkeypatch.setattr(torch.cuda, "get_rng_state", lambda: gpu_state.clone())
    monkeypatch.setattr(torch.cuda, "set_rng_state", restored.append)
    saved = gather_rng(gens)
    assert torch.equal(saved["cuda"][0], gpu_state)
    restore_rng(rank_generators(1, 0), saved, 3, 0)
    assert len(restored) == 1 and torch.equal(restored[0], gpu_state)
    seeded = []
    monkeypatch.setattr(torch.cuda, "manual_seed_all", seeded.append)
    restore_rng(rank_generators(1, 0), {k: v for k, v in saved.items() if k != "cuda"}, 3, 0)  # saved on a CPU
    assert len(restored) == 1 and seeded == [7919 * 3]  # re-seeded from the iteration, not left at the first draws
