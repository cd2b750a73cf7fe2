"""``make bench``: measured side by side in one run, printed as ratios.

1. Rollout throughput (tokens/s) of the KV-cached sampler vs the naive one that recomputes the whole prefix
   at every step: the same GPT, the same batch, T = 64 and T = 256.
2. The time split of one training iteration of the embedded default (rollout / decode / reward / update).
"""

from __future__ import annotations

import tempfile
import time

import torch

from rlar.config import compose_config
from rlar.loop import train_rl_loop
from rlar.policy.gpt import GPT
from rlar.sampling import sample_codes_with_logprobs


def sampler_throughput(seq_len: int, batch: int = 32, repeats: int = 2) -> dict[str, float]:
    torch.manual_seed(0)
    policy = GPT(vocab_size=64, block_size=seq_len, num_classes=10, n_layer=3, n_head=4, n_embd=96).eval()
    start = (torch.zeros(batch, 0, dtype=torch.long), torch.randint(0, 10, (batch,)))
    out = {}
    for name, use_cache in (("kv_cache", True), ("naive", False)):
        sample_codes_with_logprobs(policy, start, min(seq_len, 8), use_cache=use_cache)  # warm-up
        tic = time.perf_counter()
        for _ in range(repeats):
            sample_codes_with_logprobs(policy, start, seq_len, use_cache=use_cache)
        out[name] = repeats * batch * seq_len / (time.perf_counter() - tic)
    return out


def iteration_split(iterations: int = 3) -> dict[str, float]:
    """Mean seconds per phase over a few iterations of the default config (quickly trained tokenizer/prior:
    the split does not depend on how good they are)."""
    with tempfile.TemporaryDirectory() as tmp:
        cfg = compose_config([
            f"train.iterations={iterations}", "eval.max_items=16", f"cache_dir={tmp}/cache",
            "tokenizer.train.steps=20", "policy.pretrain.steps=20", "logger.image_every=0",
        ])
        summary = train_rl_loop(cfg, tmp)
    return summary["timings"]


def main() -> None:
    print(f"rlar bench (CPU threads: {torch.get_num_threads()})")
    print("\n1. rollout throughput, GPT 3x96, batch 32 (tokens/s)")
    print(f"{'T':>5} {'kv_cache':>12} {'naive':>12} {'speed-up':>9}")
    for seq_len in (64, 256):
        r = sampler_throughput(seq_len)
        print(f"{seq_len:>5} {r['kv_cache']:>12.0f} {r['naive']:>12.0f} {r['kv_cache'] / r['naive']:>8.1f}x")
    print("\n2. one training iteration of the embedded default (batch 8 x G 8 = 64 sequences of 64 tokens)")
    split = iteration_split()
    total = sum(split.values())
    for key, seconds in split.items():
        print(f"  {key:<14} {seconds * 1000:>8.1f} ms  {100 * seconds / total:>5.1f}%")
    print(f"  {'total':<14} {total * 1000:>8.1f} ms")


if __name__ == "__main__":
    main()
