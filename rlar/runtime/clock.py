"""Wall-clock time of the loop's phases, on any device."""

from __future__ import annotations

import time

import torch


def phase_time(device: torch.device | str) -> float:
    """``time.perf_counter()`` once ``device`` has run the work queued on it: CUDA runs kernels asynchronously, so
    without waiting, a phase's GPU work would be timed in the first phase that waits for it (the rollout's in the
    decode, which reads the codes)."""
    device = torch.device(device)
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return time.perf_counter()
