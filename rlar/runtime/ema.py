"""The exponential moving average of the policy's weights (``train.ema_decay``): what evaluation samples from and
what an exporter writes."""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn
from torch.distributed.fsdp import FSDPModule
from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn

from rlar.runtime.cache import load_checkpoint


def check_decay(decay: float | None) -> None:
    if decay is not None and not 0.0 <= decay < 1.0:
        raise ValueError(f"train.ema_decay must be in [0, 1) (or null: no average), got {decay}")


def policy_ema(policy: nn.Module, decay: float) -> AveragedModel:
    """A copy of ``policy`` whose weights average it from now on: after each ``update_parameters(policy)``,
    ``ema = decay * ema + (1 - decay) * policy`` (``ema.module`` is the averaged policy; buffers follow the policy).
    """
    check_decay(decay)
    ema = AveragedModel(policy, multi_avg_fn=get_ema_multi_avg_fn(decay)).requires_grad_(False)
    ema.update_parameters(policy)  # the first update copies: the average starts at the policy's weights
    return ema


def update_after_every_step(optimizer: torch.optim.Optimizer, ema: AveragedModel, policy: nn.Module) -> None:
    """Average ``policy`` into ``ema`` after every ``optimizer.step()``. Under FSDP2 both hold their shards: an
    evaluation leaves the average's root unit gathered, so it is resharded first."""

    def update(*_):
        if isinstance(ema.module, FSDPModule):
            ema.module.reshard()
        ema.update_parameters(policy)

    optimizer.register_step_post_hook(update)


def exported_policy(checkpoints: str | Path, ema: bool = True) -> dict[str, torch.Tensor]:
    """The policy weights a run saved under ``checkpoints`` (a plain state dict, loadable as ``policy.checkpoint``):
    its average when it kept one and ``ema`` is True, else the policy itself. A consolidated checkpoint holds both
    in ``last.pt``; a sharded run exports ``policy.pt`` and ``ema.pt`` when it finishes (and removes them at its next
    save: they are of its last end), so one stopped before its end has none."""
    checkpoints = Path(checkpoints)
    if not (checkpoints / "last.pt").is_file():
        raise FileNotFoundError(no_checkpoint_message(checkpoints.parent))
    record = load_checkpoint(checkpoints / "last.pt", "the run's last checkpoint")
    if record.get("format") == "sharded":
        path = checkpoints / "ema.pt"
        path = path if ema and path.is_file() else checkpoints / "policy.pt"
        if not path.is_file():
            raise FileNotFoundError(unfinished_shards_message(checkpoints))
        return load_checkpoint(path, "the run's policy")
    return record["ema"] if ema and "ema" in record else record["policy"]


def no_checkpoint_message(run_dir: str | Path) -> str:
    """What to do about a run dir without ``checkpoints/last.pt`` (one ``rlar-prepare`` wrote, or a run that has not
    saved yet)."""
    return (f"'{run_dir}' holds no checkpoint (no checkpoints/last.pt): train it first with python -m rlar.run and "
            "the overrides in its .hydra/overrides.yaml, or give the output directory of an rlar run that has saved a "
            "checkpoint")


def unfinished_shards_message(checkpoints: str | Path) -> str:
    """What to do about the checkpoints of a sharded run stopped before its end (no ``policy.pt`` export)."""
    return (f"{checkpoints} holds the shards of a run stopped before its end: train.checkpoint_format=sharded writes "
            "the policy's weights (policy.pt) when the run finishes; run the same command to finish it (it resumes), "
            "then evaluate or export it")
