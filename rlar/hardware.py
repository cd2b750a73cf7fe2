"""Where and how the loop runs: device, precision, seed."""

from __future__ import annotations

import contextlib
import random
from dataclasses import dataclass

import numpy as np
import torch

PRECISIONS = ("fp32", "bf16")


@dataclass
class Hardware:
    device: str = "cpu"
    precision: str = "fp32"  # fp32 | bf16 (autocast for the policy; log-softmax stays fp32)
    seed: int = 0
    num_threads: int | None = None  # CPU threads for torch; null keeps torch's default

    def __post_init__(self):
        if self.precision not in PRECISIONS:
            raise ValueError(f"hardware.precision must be one of {PRECISIONS}, got {self.precision!r}")
        if self.device.startswith("cuda") and not torch.cuda.is_available():
            raise ValueError(f"hardware.device={self.device!r} but CUDA is not available; use hardware=cpu")
        if self.num_threads:
            torch.set_num_threads(self.num_threads)

    @property
    def torch_device(self) -> torch.device:
        return torch.device(self.device)

    def seed_everything(self) -> None:
        random.seed(self.seed)
        np.random.seed(self.seed)
        torch.manual_seed(self.seed)

    def autocast(self):
        """A context for the policy's forward passes."""
        if self.precision == "bf16":
            return torch.autocast(self.torch_device.type, dtype=torch.bfloat16)
        return contextlib.nullcontext()
