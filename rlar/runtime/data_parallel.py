"""Data-parallel wrappers from PyTorch: DDP, and FSDP2 (``fully_shard`` per transformer block, mixed precision
under bf16, CPU offload of the frozen KL reference, one all-gather per rollout)."""

from __future__ import annotations

import contextlib
import gc
import warnings

import torch
import torch.distributed as dist
from torch import nn
from torch.distributed.device_mesh import DeviceMesh, init_device_mesh
from torch.distributed.fsdp import (
    CPUOffloadPolicy,
    FSDPModule,
    MixedPrecisionPolicy,
    OffloadPolicy,
    fully_shard,
    register_fsdp_forward_method,
)
from torch.nn.parallel import DistributedDataParallel

from rlar.runtime.offload import CPUResident

# the policy methods the sampler calls besides forward: under FSDP2 they must gather the root's parameters too
SAMPLING_METHODS = ("prefill", "step", "hidden_states", "decode_step")


def transformer_blocks(module: nn.Module) -> list[nn.Module]:
    """The repeated blocks of a policy: the items of its outermost ``nn.ModuleList``s, at any depth (GPT's ``blocks``,
    LlamaGen's ``layers``, ARPG's ``layers.self_dec`` and ``layers.cross_dec``); a list inside a block stays in it."""
    blocks = []
    for child in module.children():
        blocks.extend(child if isinstance(child, nn.ModuleList) else transformer_blocks(child))
    return blocks


def fsdp_mesh(device: torch.device) -> DeviceMesh:
    """The one-dimensional mesh of every process that FSDP2 shards over (one per process: ``release_mesh``)."""
    return init_device_mesh(device.type, (dist.get_world_size(),))


def release_mesh(mesh: DeviceMesh) -> None:
    """Let go of ``mesh``'s process groups, so that destroying them stops their worker threads at once.

    PyTorch's DTensor caches keep an FSDP2 mesh alive until the interpreter exits, and the mesh keeps its process
    group: without this, the group's gloo threads outlive ``destroy_process_group`` and may release a finished
    collective's tensors while the interpreter shuts down, which aborts the process ("terminate called without an
    active exception") after a run that succeeded. The sharded modules hold the group too: unreachable by now,
    they are collected first. (A mesh of an older PyTorch that names its groups without holding them has no
    registry to clear.)"""
    gc.collect()
    getattr(mesh, "_pg_registry", {}).clear()


def shard(module: nn.Module, mesh: DeviceMesh | None, param_dtype: torch.dtype | None = None,
          on_cpu: bool = False) -> nn.Module:
    """FSDP2 in place over ``mesh`` (None: a mesh of FSDP2's own, which ``release_mesh`` cannot reach): one unit per
    transformer block, the rest (embeddings, head, norms) in the root unit.

    ``param_dtype`` (bf16): the gathered weights and the forward/backward compute in it, the gradients reduced in
    fp32 and the sharded weights (what the optimizer steps) kept fp32. ``on_cpu``: the shards live on the CPU
    and are gathered to the device for each forward pass (a frozen module: the KL reference)."""
    options = {"mesh": mesh,
               "mp_policy": MixedPrecisionPolicy(param_dtype=param_dtype, reduce_dtype=torch.float32)
               if param_dtype is not None else MixedPrecisionPolicy(),
               "offload_policy": CPUOffloadPolicy(pin_memory=torch.cuda.is_available()) if on_cpu else OffloadPolicy()}
    # a Linear over [N, T, D] returns a view, so FSDP2 warns that an in-place op on the logits would skip its
    # pre-backward hook; rlar only reads them (a new tensor at the first op: fp32, guidance, log-softmax)
    warnings.filterwarnings("ignore", message=r"FSDP2-wrapped module .* returned a view tensor", category=UserWarning)
    for block in transformer_blocks(module):
        fully_shard(block, **options)
    fully_shard(module, **options)
    for name in SAMPLING_METHODS:
        if hasattr(module, name):
            register_fsdp_forward_method(module, name)
    return module


def wrap(module: nn.Module | None, strategy: str, device: torch.device, trainable: bool = True,
         param_dtype: torch.dtype | None = None, on_cpu: bool = False, mesh: DeviceMesh | None = None):
    """The module the training pass calls: a DDP wrapper (trainable modules only; replicas need no wrapper to
    sample), or the module itself, sharded in place under FSDP2 over ``mesh`` (with ``param_dtype``, see ``shard``).
    ``on_cpu`` (frozen modules): kept on the CPU between calls (FSDP2's CPU offload, else ``CPUResident``)."""
    if module is None:
        return module
    if strategy == "fsdp":
        return shard(module, mesh, param_dtype, on_cpu)
    if on_cpu:
        return CPUResident(module)
    if strategy == "none" or not trainable:
        return module
    return DistributedDataParallel(module, device_ids=[device.index] if device.type == "cuda" else None)


@contextlib.contextmanager
def gathered(module: nn.Module):
    """Within it, an FSDP2-sharded ``module``'s blocks keep their gathered weights between calls, so that a
    rollout's ``prefill``/``step`` calls all-gather each unit once, not once per token; after it they are sharded
    again. Nothing for other modules."""
    units = [m for m in module.modules() if isinstance(m, FSDPModule) and m is not module]
    for unit in units:  # the root keeps its weights gathered after a forward pass anyway
        unit.set_reshard_after_forward(False, recurse=False)
    try:
        yield
    finally:
        for unit in units:
            unit.set_reshard_after_forward(True, recurse=False)
            unit.reshard()


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
