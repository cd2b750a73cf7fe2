"""How close KV-cached decoding comes to the memory-bandwidth limit: each step must read every weight once and
the keys and values cached so far, so ``bytes per step / step time`` cannot exceed the device's bandwidth."""

from __future__ import annotations

import time

import torch
from torch import nn

from rlar.rollout.sampling import cache_dtype, sample_codes_with_logprobs

# peak memory bandwidth in bytes/s from the vendors' data sheets, by a substring of torch.cuda.get_device_name();
# the first match wins, so specific names come before general ones
PEAK_BANDWIDTH = (
    ("H200", 4.8e12),
    ("H100 NVL", 3.9e12),
    ("H100 PCIe", 2.0e12),
    ("H100", 3.35e12),  # SXM
    ("A100-SXM4-80GB", 2.039e12),
    ("A100 80GB PCIe", 1.935e12),
    ("A100", 1.555e12),  # 40 GB
    ("L40S", 0.864e12),
    ("A10", 0.6e12),
    ("V100", 0.9e12),
)


def device_bandwidth(name: str, override_gbs: float | None = None) -> float | None:
    """Bytes/s of the device called ``name``: ``override_gbs`` (GB/s) when given, else the table's; None if unknown."""
    if override_gbs is not None:
        return override_gbs * 1e9
    return next((bandwidth for key, bandwidth in PEAK_BANDWIDTH if key in name), None)


def params_read_per_step(model: nn.Module) -> int:
    """Parameters one decoding step reads in full: all but the embedding tables (of which it reads a row per
    sequence)."""
    tables = {id(m.weight) for m in model.modules() if isinstance(m, nn.Embedding)}
    return sum(p.numel() for p in model.parameters() if id(p) not in tables)


def decode_bytes_per_step(params: int, weight_bytes: int, n_layer: int, width: int, rows: int, seq_len: int,
                          cache_bytes: int) -> float:
    """Mean bytes a step reads when decoding ``seq_len`` tokens for ``rows`` sequences: every weight once
    (``weight_bytes`` each, the precision the step computes in) plus the keys and values of the positions filled
    so far, ``n_layer`` layers of ``width`` channels each; step i (0-based) attends to i + 1 positions, so
    (seq_len + 1) / 2 on average."""
    weights = params * weight_bytes
    kv_per_position = 2 * n_layer * rows * width * cache_bytes
    return weights + kv_per_position * (seq_len + 1) / 2


def bandwidth_fraction(bytes_per_step: float, step_s: float, bandwidth: float | None) -> float | None:
    """The share of ``bandwidth`` (bytes/s) a step of ``step_s`` seconds that reads ``bytes_per_step`` reaches."""
    return bytes_per_step / step_s / bandwidth if bandwidth else None


def measure_decode(policy, batch: int, autocast, bandwidth: float | None, weight_bytes: int) -> dict:
    """Sample ``batch`` class-conditional sequences of the policy's ``block_size`` tokens (one untimed pass first);
    tokens/s, seconds per step, peak CUDA memory, bytes per step and their fraction of ``bandwidth``."""
    device = next(policy.parameters()).device
    start = (torch.zeros(batch, 0, dtype=torch.long, device=device), torch.arange(batch, device=device) % 1000)
    seq_len = policy.block_size
    with torch.no_grad(), autocast():
        sample_codes_with_logprobs(policy, start, seq_len)  # warm-up (and compilation, when compiled)
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
        tic = time.perf_counter()
        sample_codes_with_logprobs(policy, start, seq_len)
        torch.cuda.synchronize(device)
        seconds = time.perf_counter() - tic
        cache_bytes = policy.new_cache(1, device, cache_dtype(device)).keys[0].element_size()  # as the sampler's
    moved = decode_bytes_per_step(params_read_per_step(policy), weight_bytes, policy.n_layer, policy.n_embd, batch,
                                  seq_len, cache_bytes)
    step_s = seconds / seq_len  # seq_len model calls: the prefill of the class token, then a step per token
    return {"tokens_per_s": batch * seq_len / seconds, "step_ms": 1e3 * step_s,
            "peak_mem_gib": torch.cuda.max_memory_allocated(device) / 2**30, "bytes_per_step": moved,
            "bandwidth_fraction": bandwidth_fraction(moved, step_s, bandwidth)}
