"""Data-parallel wrappers from PyTorch: DDP, and FSDP2 (``fully_shard`` per transformer block)."""

from __future__ import annotations

import contextlib

import torch
from torch import nn
from torch.distributed.fsdp import FSDPModule, fully_shard, register_fsdp_forward_method
from torch.nn.parallel import DistributedDataParallel

# the policy methods the sampler calls besides forward: under FSDP2 they must gather the root's parameters too
SAMPLING_METHODS = ("prefill", "step", "hidden_states", "decode_step")


def transformer_blocks(module: nn.Module) -> list[nn.Module]:
    """The repeated blocks of a policy: the children of its top-level ``nn.ModuleList`` (``blocks``, ``layers``)."""
    return [block for child in module.children() if isinstance(child, nn.ModuleList) for block in child]


def shard(module: nn.Module) -> nn.Module:
    """FSDP2 in place: one unit per transformer block, the rest (embeddings, head, norms) in the root unit."""
    for block in transformer_blocks(module):
        fully_shard(block)
    fully_shard(module)
    for name in SAMPLING_METHODS:
        if hasattr(module, name):
            register_fsdp_forward_method(module, name)
    return module


def wrap(module: nn.Module | None, strategy: str, device: torch.device, trainable: bool = True):
    """The module the training pass calls: a DDP wrapper (trainable modules only; replicas need no wrapper to
    sample), or the module itself, sharded in place under FSDP2."""
    if module is None or strategy == "none":
        return module
    if strategy == "fsdp":
        return shard(module)
    if not trainable:
        return module
    return DistributedDataParallel(module, device_ids=[device.index] if device.type == "cuda" else None)


@contextlib.contextmanager
def gradient_sync(modules, enabled: bool):
    """Within it, backward passes accumulate gradients locally when ``enabled`` is False (gradient accumulation
    without an all-reduce per micro-batch); synchronise as usual when True."""
    with contextlib.ExitStack() as stack:
        for m in modules:
            if enabled or m is None:
                continue
            if isinstance(m, DistributedDataParallel):
                stack.enter_context(m.no_sync())
            elif isinstance(m, FSDPModule):
                m.set_requires_gradient_sync(False)
                stack.callback(m.set_requires_gradient_sync, True)
        yield
