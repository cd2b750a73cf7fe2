"""``make bench`` section 4: peak memory of a rollout with and without ``rollout.micro_batch_size``, and of the
update's pass with and without ``policy.grad_checkpointing``, side by side in one run.

On CUDA: ``torch.cuda.max_memory_allocated`` above what was allocated before the case. On the CPU: the growth of
the resident set's high-water mark (``VmHWM``) during the case, each case in a fresh process (so that one
case's peak cannot hide another's) whose allocator returns every freed block over 64 KiB to the system
(glibc's ``MALLOC_MMAP_THRESHOLD_``), so that the resident set follows the live tensors.
"""

from __future__ import annotations

import os
import resource
import subprocess
import sys
from pathlib import Path

import torch

from rlar.policy.gpt import GPT
from rlar.rollout.sampling import policy_logprobs, sample_codes_with_logprobs

TOKENS, WIDTH = 256, 128
ROWS, ROLLOUT_CHUNK, ROLLOUT_LAYERS = 128, 16, 3  # a rollout of ROWS sequences (guided: twice the rows in the policy)
UPDATE_ROWS, UPDATE_LAYERS = 16, 8  # one update minibatch; checkpointing saves more the more blocks there are


def model(n_layer: int, device: str) -> GPT:
    torch.manual_seed(0)
    return GPT(vocab_size=64, block_size=TOKENS, num_classes=10, n_layer=n_layer, n_head=4, n_embd=WIDTH).to(device)


def rollout(policy: GPT, micro_batch_size: int | None) -> None:
    labels = torch.randint(0, 10, (ROWS,), generator=torch.Generator().manual_seed(0)).to(policy.head.weight.device)
    start = (torch.zeros(ROWS, 0, dtype=torch.long, device=labels.device), labels)
    sample_codes_with_logprobs(policy.eval(), start, TOKENS, cfg_scale=2.0, generator=torch.Generator().manual_seed(0),
                               micro_batch_size=micro_batch_size)


def update_pass(policy: GPT, grad_checkpointing: bool) -> None:
    """The update's teacher-forced pass (guided, as the default's log-prob rule) and its backward."""
    policy.grad_checkpointing = grad_checkpointing
    device = policy.head.weight.device
    tokens = torch.randint(0, 64, (UPDATE_ROWS, TOKENS), generator=torch.Generator().manual_seed(0)).to(device)
    logp, _ = policy_logprobs(policy.train(), tokens, torch.zeros(UPDATE_ROWS, dtype=torch.long, device=device),
                              cfg_scale=2.0)
    logp.gather(-1, tokens[..., None]).mean().backward()


CASES = {"rollout/all rows": (ROLLOUT_LAYERS, lambda p: rollout(p, None)),
         "rollout/micro": (ROLLOUT_LAYERS, lambda p: rollout(p, ROLLOUT_CHUNK)),
         "update/plain": (UPDATE_LAYERS, lambda p: update_pass(p, False)),
         "update/checkpointed": (UPDATE_LAYERS, lambda p: update_pass(p, True))}


def peak_mb(case: str, device: str) -> float:
    """MB the case needs above the model itself, at its peak."""
    n_layer, run = CASES[case]
    policy = model(n_layer, device)
    if device.startswith("cuda"):
        torch.cuda.synchronize()
        before = torch.cuda.memory_allocated()
        torch.cuda.reset_peak_memory_stats()
        run(policy)
        torch.cuda.synchronize()
        return (torch.cuda.max_memory_allocated() - before) / 2**20
    before = resident_peak_kib()
    run(policy)
    return (resident_peak_kib() - before) / 2**10


def resident_peak_kib() -> int:
    """This address space's resident-set high-water mark in KiB (Linux's ``VmHWM``). Not ``ru_maxrss``: a process
    started by a large one inherits its parent's peak there across ``exec``, and a case would then measure 0."""
    status = Path("/proc/self/status")
    if not status.is_file():  # not Linux: the process's peak, which a fresh process starts low on these systems
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return next(int(line.split()[1]) for line in status.read_text().splitlines() if line.startswith("VmHWM:"))


def peak_memory(device: str) -> dict[str, float]:
    """Each case's peak MB: in this process on CUDA, in a fresh process per case on the CPU."""
    if device.startswith("cuda"):
        return {case: peak_mb(case, device) for case in CASES}
    env = {**os.environ, "MALLOC_MMAP_THRESHOLD_": str(64 * 1024)}
    return {case: float(subprocess.run([sys.executable, "-m", "rlar.studies.bench_memory", case, device], env=env,
                                       capture_output=True, text=True, check=True).stdout)
            for case in CASES}


def print_peak_memory() -> None:
    device = "cuda" if torch.cuda.is_available() else "cpu"
    how = "max_memory_allocated" if device == "cuda" else "resident-set high-water mark, a fresh process per case"
    print(f"\n4. peak memory above the model, T = {TOKENS} ({device}: {how}; MB)")
    m = peak_memory(device)
    rollout_name, update_name = f"rollout GPT {ROLLOUT_LAYERS}x{WIDTH}", f"update GPT {UPDATE_LAYERS}x{WIDTH}"
    rows = [(f"{rollout_name}, {ROWS} rows", "all rows", m["rollout/all rows"],
             f"micro_batch_size={ROLLOUT_CHUNK}", m["rollout/micro"]),
            (f"{update_name}, {UPDATE_ROWS} rows", "plain", m["update/plain"],
             "grad_checkpointing", m["update/checkpointed"])]
    for what, base_name, base, option_name, option in rows:
        print(f"  {what:<28} {base_name:>9} {base:>8.1f}   {option_name:>19} {option:>8.1f}   "
              f"{base / max(option, 1e-3):>5.1f}x less")


if __name__ == "__main__":  # one CPU case in a fresh process: python -m rlar.studies.bench_memory CASE DEVICE
    print(peak_mb(sys.argv[1], sys.argv[2]))
