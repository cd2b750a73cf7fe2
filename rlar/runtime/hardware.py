"""Where and how the loop runs: device, precision, distributed strategy, seed."""

from __future__ import annotations

import contextlib
import logging
import os
import random
from dataclasses import dataclass, field
from datetime import timedelta

import numpy as np
import torch
import torch.distributed as dist
from torch.distributed.device_mesh import DeviceMesh

from rlar.contracts import RasterPolicy, StaticStepPolicy
from rlar.rollout.static_decode import use_static_decode
from rlar.runtime import distributed
from rlar.runtime.data_parallel import fsdp_mesh, release_mesh, wrap

log = logging.getLogger(__name__)

PRECISIONS = ("fp32", "bf16")
STRATEGIES = ("none", "ddp", "fsdp")


@dataclass
class Hardware:
    device: str = "cpu"
    precision: str = "fp32"  # fp32 | bf16 (autocast for the policy; log-softmax, ratio, loss and tokenizer in fp32)
    strategy: str = "none"  # none | ddp | fsdp (FSDP2), for processes launched by torchrun
    tf32: bool = False  # TF32 matmuls and convolutions on CUDA
    compile: bool = False  # torch.compile the policy's teacher-forced forward (the update's pass)
    # the raster sampler's decode step at static shapes (a StaticKVCache), torch.compiled: mode "reduce-overhead"
    # (CUDA graphs) on CUDA, "default" on the CPU. Log-probs match the eager step to fp32 rounding (~1e-6)
    compile_decode: bool = False
    seed: int = 0
    num_threads: int | None = None  # CPU threads for torch; null keeps torch's default
    timeout_min: int = 30  # how long a collective waits for the other ranks before failing
    mesh: DeviceMesh | None = field(default=None, init=False, repr=False)  # FSDP2's, made by ``setup``

    def __post_init__(self):
        if self.precision not in PRECISIONS:
            raise ValueError(f"hardware.precision must be one of {PRECISIONS}, got {self.precision!r}")
        if self.strategy not in STRATEGIES:
            raise ValueError(f"hardware.strategy must be one of {STRATEGIES}, got {self.strategy!r}")
        if self.compile_decode and self.strategy == "fsdp":
            raise ValueError("hardware.compile_decode does not support hardware.strategy=fsdp (sharded weights are "
                             "gathered per block in eager steps); use ddp or none, or compile_decode=false")
        if not 0 <= self.seed < 2**32:  # numpy's seeds (seed_everything)
            raise ValueError(f"hardware.seed must be in [0, 2**32), got {self.seed}")
        if self.num_threads is not None and self.num_threads < 1:
            raise ValueError(f"hardware.num_threads must be >= 1 (CPU threads), or null for torch's default; got "
                             f"{self.num_threads}")
        if self.timeout_min < 1:
            raise ValueError(f"hardware.timeout_min must be >= 1 (minutes a collective waits), got {self.timeout_min}")
        if self.device.startswith("cuda") and not torch.cuda.is_available():
            fix = ("hardware=cpu" if self.strategy == "none" else
                   f"hardware={self.strategy} hardware.device=cpu hardware.precision=fp32 (gloo)")
            raise ValueError(f"hardware.device={self.device!r} but CUDA is not available; use {fix}")
        if self.strategy == "none" and distributed.env_world_size() > 1:
            raise ValueError(f"hardware.strategy='none' runs one process, and torchrun started "
                             f"{distributed.env_world_size()}: each would train the whole run alone; use hardware=ddp "
                             "or hardware=fsdp under torchrun")
        if self.strategy != "none" and not distributed.launched_by_torchrun():
            raise ValueError(f"hardware.strategy={self.strategy!r} needs processes launched by torchrun, e.g. "
                             f"`torchrun --nproc_per_node=2 -m rlar.run hardware={self.strategy}`; for one "
                             "process use hardware=cpu or hardware=cuda")
        if (self.strategy != "none" and torch.device(self.device).index is not None
                and int(os.environ.get("LOCAL_WORLD_SIZE", 1)) > 1):
            raise ValueError(f"hardware.device={self.device!r} puts every torchrun process of this machine on one GPU; "
                             "use hardware.device=cuda (each process takes cuda:LOCAL_RANK)")
        if self.num_threads:
            torch.set_num_threads(self.num_threads)

    @property
    def torch_device(self) -> torch.device:
        """This process's device; a GPU always with its index (``torch.cuda.set_device`` and NCCL refuse a bare
        ``cuda``): the one named (``cuda:1``), else ``cuda:LOCAL_RANK`` under torchrun, else ``cuda:0``."""
        device = torch.device(self.device)
        if device.type != "cuda" or device.index is not None:
            return device
        return torch.device("cuda", int(os.environ.get("LOCAL_RANK", 0)) if self.strategy != "none" else 0)

    def setup(self) -> None:
        """Join the process group (under torchrun), pick this rank's GPU, set TF32, seed everything."""
        device = self.torch_device
        if device.type == "cuda":
            torch.cuda.set_device(device)
            torch.backends.cuda.matmul.allow_tf32 = self.tf32
            torch.backends.cudnn.allow_tf32 = self.tf32
        if self.strategy != "none" and not distributed.is_distributed():
            backend = "nccl" if device.type == "cuda" else "gloo"
            dist.init_process_group(backend, timeout=timedelta(minutes=self.timeout_min),
                                    device_id=device if device.type == "cuda" else None)
            log.info("rank %d of %d (%s, %s)", dist.get_rank(), dist.get_world_size(), backend, self.strategy)
        if self.strategy == "fsdp":
            self.mesh = fsdp_mesh(device)
        self.seed_everything()

    def teardown(self, clean: bool = True) -> None:
        """Destroy the process group; after a clean exit (``clean``) first wait for every rank, so that none closes
        its connections while another still uses them (a rank that failed must not wait for the others). FSDP2's
        mesh lets go of the group first, so that its threads stop now, not while the interpreter shuts down."""
        if distributed.is_distributed():
            if clean:
                dist.barrier()
            if self.mesh is not None:
                release_mesh(self.mesh)
                self.mesh = None
            dist.destroy_process_group()

    def seed_everything(self) -> None:
        """The same seed on every rank: models built from it start identical. (Sampling seeds differ per rank.)"""
        random.seed(self.seed)
        np.random.seed(self.seed)
        torch.manual_seed(self.seed)

    def autocast(self):
        """A context for the policy's forward passes."""
        if self.precision == "bf16":
            return torch.autocast(self.torch_device.type, dtype=torch.bfloat16)
        return contextlib.nullcontext()

    def prepare(self, module: torch.nn.Module | None, trainable: bool = True, on_cpu: bool = False):
        """Compile (when asked) and wrap for ``hardware.strategy``; returns the module the training pass calls.
        Under FSDP2 with bf16 the weights are gathered and computed in bf16 (gradients reduced in fp32).
        ``on_cpu``: a frozen module kept on the CPU between its calls (``rlar.runtime.data_parallel.wrap``).

        ``compile`` compiles ``forward`` (fixed shapes: one graph). The sampler's ``step`` grows the eager KV cache
        one position at a time; ``compile_decode`` swaps it for the static-shape step (a policy with
        ``static_step``) and compiles that. ``prefill`` runs once per rollout and stays eager."""
        if module is not None and self.compile:
            module.forward = torch.compile(module.forward)
        if module is not None and self.compile_decode:
            if isinstance(module, StaticStepPolicy):
                use_static_decode(module, "reduce-overhead" if self.torch_device.type == "cuda" else "default")
            elif isinstance(module, RasterPolicy):
                log.warning("hardware.compile_decode: %s has no static decode step; it decodes eagerly",
                            type(module).__name__)
        param_dtype = torch.bfloat16 if self.precision == "bf16" else None
        return wrap(module, self.strategy, self.torch_device, trainable, param_dtype, on_cpu, self.mesh)
