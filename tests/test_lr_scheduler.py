"""The scheduler group: hand-computed lr sequences, the constant default, exact resume, any torch scheduler."""

import math

import pytest
import torch
from hydra.utils import instantiate

from rlar.config.store import compose_config
from rlar.config.validate import ConfigError, check_config
from rlar.runtime.lr_scheduler import constant, cosine, warmup_linear


def optimizer(lr=1.0):
    return torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=lr)


def lrs(scheduler, steps):
    """The lr of each of ``steps`` iterations, read and stepped as the loop does."""
    out = []
    for _ in range(steps):
        out.append(scheduler.get_last_lr()[0])
        scheduler.optimizer.step()
        scheduler.step()
    return out


def test_warmup_linear_by_hand():
    assert lrs(warmup_linear(optimizer(), warmup_steps=4), 6) == [0.25, 0.5, 0.75, 1.0, 1.0, 1.0]


def test_cosine_by_hand():
    c = math.cos(math.pi / 4)  # progress 1/4 and 3/4 of the 4 decay steps after 2 warm-up steps
    expected = [0.5, 1.0, 1.0, 0.2 + 0.4 * (1 + c), 0.6, 0.2 + 0.4 * (1 - c), 0.2, 0.2]
    got = lrs(cosine(optimizer(), total_steps=6, warmup_steps=2, min_lr_ratio=0.2), 8)
    assert got == pytest.approx(expected, rel=1e-15, abs=0)


def test_constant_keeps_the_optimizer_lr_bit_for_bit():
    assert lrs(constant(optimizer(lr=1e-4)), 5) == [1e-4] * 5


def test_default_config_is_constant():
    cfg = compose_config([])
    assert lrs(instantiate(cfg.scheduler, optimizer=optimizer(lr=3e-4)), 3) == [3e-4] * 3


def test_resumed_schedule_continues_exactly_and_keeps_its_length(tmp_path):
    straight = lrs(cosine(optimizer(1e-4), total_steps=10, warmup_steps=3, min_lr_ratio=0.1), 10)
    first = cosine(optimizer(1e-4), total_steps=10, warmup_steps=3, min_lr_ratio=0.1)
    head = lrs(first, 4)
    torch.save(first.state_dict(), tmp_path / "s.pt")
    # a run extended with more iterations builds a longer schedule; the saved one wins
    resumed = cosine(optimizer(1e-4), total_steps=20, warmup_steps=3, min_lr_ratio=0.1)
    resumed.load_state_dict(torch.load(tmp_path / "s.pt", weights_only=True))
    assert head + lrs(resumed, 6) == straight


def test_any_torch_scheduler_by_target(tmp_path):
    (tmp_path / "scheduler").mkdir()
    (tmp_path / "scheduler" / "step.yaml").write_text(
        "_target_: torch.optim.lr_scheduler.StepLR\nstep_size: 2\ngamma: 0.5\n")
    cfg = compose_config([f"hydra.searchpath=[file://{tmp_path}]", "scheduler=step", "scheduler.gamma=0.25"])
    assert lrs(instantiate(cfg.scheduler, optimizer=optimizer()), 5) == [1.0, 1.0, 0.25, 0.25, 0.0625]


@pytest.mark.parametrize("overrides,message", [
    (["scheduler=cosine", "scheduler.warmup_steps=300"], "scheduler.warmup_steps=300 must be >= 0 and below"),
    (["scheduler=cosine", "scheduler.min_lr_ratio=1.5"], "scheduler.min_lr_ratio must be in"),
    (["scheduler=warmup_linear", "scheduler.warmup_steps=-1"], "scheduler.warmup_steps must be >= 0"),
])
def test_bad_schedule_is_a_config_error(overrides, message):
    with pytest.raises(ConfigError, match=message):
        check_config(compose_config(overrides))


@pytest.mark.parametrize("warmup", [0, 20])
def test_a_cosine_recipe_evaluates_its_prior_with_no_iterations(warmup):
    """``train.iterations=0`` (the prior's evaluation only) leaves the cosine schedule nothing to decay over; it is
    never stepped, and is no error."""
    cfg = compose_config(["scheduler=cosine", f"scheduler.warmup_steps={warmup}", "train.iterations=0"])
    check_config(cfg)
    first = instantiate(cfg.scheduler, optimizer=optimizer()).get_last_lr()[0]
    assert first == (1 / warmup if warmup else 1.0)  # the first step's multiplier, never reached
