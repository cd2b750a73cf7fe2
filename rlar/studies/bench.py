"""``make bench``: measured side by side in one run, printed as ratios.

1. Rollout throughput (tokens/s) of the KV-cached sampler vs the naive one that recomputes the whole prefix
   at every step: the same GPT, the same batch, T = 64 and T = 256.
2. The time split of one training iteration of the embedded default (rollout / decode / reward / update).
3. ARPG's parallel decoding (``policy=arpg``, ``rollout.mode=parallel``) vs the raster KV-cached GPT sampler:
   tokens/s on the same batch of class labels, T = 64 and 256, ARPG with T, T/4 and T/16 steps.
4. Peak memory of a rollout with and without ``rollout.micro_batch_size`` and of the update's pass with and
   without ``policy.grad_checkpointing`` (``rlar.studies.bench_memory``).
5. rlar's raster sampler (eager KV cache, static-shape step, compiled step) vs Hugging Face ``generate`` on a GPT-2
   of the same size (4x256, vocabulary 512, batch 16, T = 256): tokens/s with per-token log-probs
   (``rlar/studies/bench_hf.py``).
"""

from __future__ import annotations

import tempfile
import time

import torch

from rlar.config.store import compose_config
from rlar.loop import train_rl_loop
from rlar.policy.arpg import ARPG
from rlar.policy.gpt import GPT
from rlar.rollout.parallel_decoding import sample_parallel
from rlar.rollout.sampling import sample_codes_with_logprobs
from rlar.studies.bench_hf import rlar_vs_hf_throughput
from rlar.studies.bench_memory import print_peak_memory


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


def parallel_throughput(seq_len: int, batch: int = 32, repeats: int = 2) -> dict[str, float]:
    """Tokens/s of the embedded GPT (3x96, raster, KV cache) and the embedded ARPG (2+2 blocks, width 96) with
    T, T/4 and T/16 parallel steps, on the same labels."""
    torch.manual_seed(0)
    gpt = GPT(vocab_size=64, block_size=seq_len, num_classes=10, n_layer=3, n_head=4, n_embd=96).eval()
    arpg = ARPG(vocab_size=64, block_size=seq_len, num_classes=10, n_layer=4, n_head=4, dim=96).eval()
    labels = torch.randint(0, 10, (batch,))
    runs = {"gpt": lambda: sample_codes_with_logprobs(gpt, (torch.zeros(batch, 0, dtype=torch.long), labels), seq_len)}
    for steps in (seq_len, seq_len // 4, seq_len // 16):
        runs[f"arpg/{steps}"] = lambda steps=steps: sample_parallel(arpg, labels, batch, num_iter=steps)
    out = {}
    for name, run in runs.items():
        run()  # warm-up
        tic = time.perf_counter()
        for _ in range(repeats):
            run()
        out[name] = repeats * batch * seq_len / (time.perf_counter() - tic)
    return out


def print_hf_comparison() -> None:
    """Section 5, on its own: ``python -c "from rlar.studies.bench import print_hf_comparison as p; p()"``."""
    print("\n5. rlar sampler vs HF transformers generate, GPT-2 size 4x256, vocabulary 512, batch 16, T = 256 "
          f"(tokens/s, with log-probs, {'cuda' if torch.cuda.is_available() else 'cpu'})")
    r = rlar_vs_hf_throughput()
    print(f"{'hf':>9} {'rlar':>9} {'static':>9} {'compiled':>9} {'rlar/hf':>8} {'compiled/hf':>12} "
          f"{'compiled/eager':>15}")
    hf, eager, compiled = r["hf"], r["rlar"], r["rlar compiled"]
    print(f"{hf:>9.0f} {eager:>9.0f} {r['rlar static']:>9.0f} {compiled:>9.0f} {eager / hf:>7.2f}x "
          f"{compiled / hf:>11.2f}x {compiled / eager:>14.2f}x")


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
    print("\n3. ARPG parallel decoding (2+2 blocks, width 96) vs raster GPT 3x96 with KV cache, batch 32 (tokens/s)")
    print(f"{'T':>5} {'gpt':>9} {'arpg T':>9} {'arpg T/4':>9} {'arpg T/16':>10} {'T/4 vs gpt':>11} {'T/16 vs gpt':>12}")
    for seq_len in (64, 256):
        r = parallel_throughput(seq_len)
        quarter, sixteenth = r[f"arpg/{seq_len // 4}"], r[f"arpg/{seq_len // 16}"]
        print(f"{seq_len:>5} {r['gpt']:>9.0f} {r[f'arpg/{seq_len}']:>9.0f} {quarter:>9.0f} {sixteenth:>10.0f} "
              f"{quarter / r['gpt']:>10.1f}x {sixteenth / r['gpt']:>11.1f}x")
    print_peak_memory()
    print_hf_comparison()


if __name__ == "__main__":
    main()
