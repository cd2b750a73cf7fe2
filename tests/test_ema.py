"""train.ema_decay: the average's update by hand, its checkpoint in both formats, and what an exporter reads."""

import pytest
import torch
from torch import nn

from rlar.config.store import compose_config
from rlar.config.validate import ConfigError, check_config
from rlar.export import run_policy_weights
from rlar.runtime.checkpoint import Checkpointer
from rlar.runtime.ema import exported_policy, policy_ema, update_after_every_step


def one_weight(value: float) -> nn.Linear:
    module = nn.Linear(1, 1, bias=False)
    module.weight.data.fill_(value)
    module.register_buffer("scale", torch.tensor(value))
    return module


def test_average_after_each_optimizer_step_by_hand():
    policy = one_weight(1.0)
    ema = policy_ema(policy, decay=0.75)
    optimizer = torch.optim.SGD(policy.parameters(), lr=1.0)
    update_after_every_step(optimizer, ema, policy)
    assert ema.module.weight.item() == 1.0  # starts at the policy
    for slope, weight, average in [(2.0, 3.0, 1.5), (2.5, 5.5, 2.5)]:  # 0.75 * 1 + 0.25 * 3; 0.75 * 1.5 + 0.25 * 5.5
        (-slope * policy.weight).sum().backward()  # SGD, lr 1: weight += slope
        optimizer.step()
        optimizer.zero_grad()
        policy.scale.fill_(weight)
        assert (policy.weight.item(), ema.module.weight.item()) == (weight, average)
    assert ema.module.scale.item() == 3.0  # buffers are copied at each update, not averaged
    assert not any(p.requires_grad for p in ema.parameters())


def modules(policy_value: float, ema_value: float) -> tuple[nn.ModuleDict, torch.optim.Optimizer]:
    policy = one_weight(policy_value)
    ema = policy_ema(one_weight(ema_value), decay=0.9)
    optimizer = torch.optim.AdamW(policy.parameters(), lr=0.1)
    policy.weight.grad = torch.ones_like(policy.weight)
    optimizer.step()
    return nn.ModuleDict({"policy": policy, "ema": ema.module}), optimizer


@pytest.mark.parametrize("fmt", ["consolidated", "sharded"])
def test_checkpoint_restores_the_average_exactly(tmp_path, fmt):
    saved, optimizer = modules(1.0, 2.0)
    Checkpointer(tmp_path, saved, optimizer, fmt).save({"iteration": 1})
    fresh, fresh_optimizer = modules(7.0, 8.0)
    Checkpointer(tmp_path, fresh, fresh_optimizer, fmt).load()
    for name in ("policy", "ema"):
        assert torch.equal(fresh[name].weight, saved[name].weight), name
    assert fresh_optimizer.state_dict()["state"][0]["exp_avg"].item() == pytest.approx(0.1)


@pytest.mark.parametrize("fmt", ["consolidated", "sharded"])
def test_exporter_reads_the_average_or_the_policy(tmp_path, fmt):
    saved, optimizer = modules(1.0, 2.0)
    checkpointer = Checkpointer(tmp_path, saved, optimizer, fmt)
    checkpointer.save({"iteration": 1})
    if fmt == "sharded":  # a finished sharded run exports both (rlar.loop.finish)
        for name in ("policy", "ema"):
            checkpointer.export_policy(tmp_path / f"{name}.pt", name)
    assert torch.equal(exported_policy(tmp_path)["weight"], saved["ema"].weight)
    assert torch.equal(exported_policy(tmp_path, ema=False)["weight"], saved["policy"].weight)


def test_exporter_reads_the_policy_of_a_run_without_average(tmp_path):
    saved, optimizer = modules(1.0, 2.0)
    Checkpointer(tmp_path, nn.ModuleDict({"policy": saved["policy"]}), optimizer).save({"iteration": 1})
    assert torch.equal(exported_policy(tmp_path)["weight"], saved["policy"].weight)


@pytest.mark.parametrize("decay", [1.0, -0.1])
def test_decay_outside_the_unit_interval_is_a_config_error(decay):
    with pytest.raises(ConfigError, match=r"train.ema_decay must be in \[0, 1\)"):
        check_config(compose_config([f"train.ema_decay={decay}"]))


def test_a_sharded_run_saved_after_its_exports_is_refused_not_read_at_its_old_weights(tmp_path):
    saved, optimizer = modules(1.0, 2.0)
    checkpointer = Checkpointer(tmp_path / "checkpoints", saved, optimizer, "sharded")
    checkpointer.save({"iteration": 1})
    for name in ("policy", "ema"):  # the run finished (rlar.loop.finish) ...
        checkpointer.export_policy(tmp_path / "checkpoints" / f"{name}.pt", name)
    assert run_policy_weights(tmp_path) == tmp_path / "checkpoints" / "policy.pt"
    checkpointer.save({"iteration": 2})  # ... then was extended, and stopped before its new end
    for read in (lambda: exported_policy(tmp_path / "checkpoints"), lambda: run_policy_weights(tmp_path)):
        with pytest.raises(FileNotFoundError, match="shards of a run stopped before its end.*run the same command"):
            read()
