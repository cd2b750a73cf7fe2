"""Decode sampled codes and score the images, optionally overlapping the two."""

from __future__ import annotations

from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager

import torch

from rlar.contracts import Reward, Tokenizer
from rlar.runtime.clock import phase_time

# what a reward reports of its service that counts items or calls: summed over processes, not averaged
SERVICE_COUNTS = ("remote_retries", "remote_failed_items")


def _slice_meta(meta: dict, n: int, lo: int, hi: int) -> dict:
    """Rows ``lo:hi`` of every per-item entry (a tensor or list of ``n``) of ``meta``."""
    def per_item(v):
        return (torch.is_tensor(v) and v.shape[:1] == (n,)) or (isinstance(v, list) and len(v) == n)

    return {k: v[lo:hi] if per_item(v) else v for k, v in meta.items()}


def decode_and_score(tokenizer: Tokenizer, reward_fn: Reward, tokens: torch.Tensor, targets: torch.Tensor | None,
                     meta: dict, chunk_size: int | None = None):
    """``(samples [N, C, H, W], rewards [N], {component: [N]}, metrics)`` for tokens ``[N, T]`` (``targets [N, C, H,
    W]``, or None for data without images).

    With ``chunk_size``, chunk i+1 is decoded while chunk i is scored on one worker thread (the reward still
    sees one call at a time). Metrics: what ``reward_fn.metrics()`` reports (remote rewards; others report
    nothing), ``time/decode``, and ``time/reward``: the scoring time not hidden behind decoding.
    """
    n = len(tokens)
    tic = phase_time(tokens.device)
    if not chunk_size or chunk_size >= n:
        samples = tokenizer.decode_code(tokens)
        decoded = phase_time(tokens.device)
        rewards, components = reward_fn(samples, targets, meta)
    else:
        with ThreadPoolExecutor(max_workers=1, thread_name_prefix="score", initializer=same_device_as,
                                initargs=(tokens.device,)) as worker:
            chunks = []
            for lo in range(0, n, chunk_size):
                hi = min(lo + chunk_size, n)
                images = tokenizer.decode_code(tokens[lo:hi])
                part = None if targets is None else targets[lo:hi]  # no targets: data without images
                chunks.append((images, worker.submit(reward_fn, images, part, _slice_meta(meta, n, lo, hi))))
            decoded = phase_time(tokens.device)
            results = [future.result() for _, future in chunks]
        samples = torch.cat([images for images, _ in chunks])
        rewards = torch.cat([r for r, _ in results])
        components = concat_components([c for _, c in results], [len(images) for images, _ in chunks])
    metrics = reward_fn.metrics()
    metrics.update({"time/decode": decoded - tic, "time/reward": phase_time(tokens.device) - decoded})
    return samples, rewards, components, metrics


def concat_components(parts: list[dict[str, torch.Tensor]], sizes: list[int]) -> dict[str, torch.Tensor]:
    """``{component: [N]}`` of the chunks' ``{component: [n_i]}`` (``n_i = sizes[i]``): every name any chunk reports,
    in first-seen order, NaN in the rows of a chunk without it (a remote chunk no server scored reports none)."""
    names = list(dict.fromkeys(name for part in parts for name in part))
    out = {}
    for name in names:
        like = next(part[name] for part in parts if name in part)  # [n_i]: dtype and device of the NaN rows
        out[name] = torch.cat([part.get(name, like.new_full((size,), float("nan")))
                               for part, size in zip(parts, sizes, strict=True)])
    return out


def same_device_as(device: torch.device) -> None:
    """A worker thread's start: CUDA's current device is per thread (a new thread starts on ``cuda:0``), so the
    worker takes ``device``'s, and a reward that names a bare ``cuda`` (``device: ${hardware.device}`` under
    torchrun) means this process's GPU there too."""
    if device.type == "cuda":
        torch.cuda.set_device(device)


@contextmanager
def scoring_only(reward: Reward) -> Iterator[Reward]:
    """``reward`` with ``learning`` off inside the block (evaluation: a reward that learns across calls scores the
    samples without learning from them), restored after."""
    before = reward.learning
    reward.learning = False
    try:
        yield reward
    finally:
        reward.learning = before
