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


def require_reward(reward, where: str):
    """``reward``, or a ``TypeError`` naming ``where`` it was built (``reward``, ``reward.components.<name>``) when it
    is not an ``rlar.contracts.Reward``."""
    if not isinstance(reward, Reward):
        raise TypeError(f"{where} built {type(reward).__qualname__}, which is not an rlar.contracts.Reward: subclass "
                        "it (class MyReward(Reward): def __call__(self, images, targets=None, meta=None) returning "
                        "(scores [N], {name: [N]})); the class gives the defaults of learning, metrics(), "
                        "state_dict() and close() that the loop reads")
    return reward


def checked_output(output, n: int, reward_fn: Reward, device) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """``reward_fn``'s ``output`` for ``n`` images, ``(scores [n], {component: [n]})`` on ``device`` (the samples':
    a reward of the user's own that scores on the CPU feeds NCCL's gathers GPU tensors too), or an error naming what
    it returned instead (a reward of the user's own that breaks the contract fails here, not deep in the update)."""
    name, contract = type(reward_fn).__qualname__, "(scores [N], {component: [N]}) for the N images it was given"
    if not (isinstance(output, tuple) and len(output) == 2):
        raise TypeError(f"reward {name} returned a {type(output).__name__}, not the pair {contract}")
    scores, components = output
    if not (torch.is_tensor(scores) and scores.shape == (n,)):
        got = tuple(scores.shape) if torch.is_tensor(scores) else type(scores).__name__
        raise ValueError(f"reward {name} returned scores {got} for {n} images: one score per image, {contract}")
    if not isinstance(components, dict):
        raise TypeError(f"reward {name} returned components as a {type(components).__name__}, not a dict: {contract}")
    bad = {key: tuple(v.shape) if torch.is_tensor(v) else type(v).__name__ for key, v in components.items()
           if not (torch.is_tensor(v) and v.shape == (n,))}
    if bad:
        raise ValueError(f"reward {name} returned components {bad} for {n} images: each one value per image, "
                         f"{contract}")
    moved = scores.to(device)  # a component that is the score stays the same object (a mix reports it once)
    return moved, {key: moved if value is scores else value.to(device) for key, value in components.items()}


def chunk_meta(meta: dict | None, n: int, lo: int, hi: int) -> dict:
    """``meta`` for items ``lo:hi`` of ``n``: a tensor with first dim ``n`` or a list (or tuple) of length ``n`` is
    sliced; other values go whole."""
    def part(value):
        if isinstance(value, torch.Tensor) and value.dim() and value.shape[0] == n:
            return value[lo:hi]
        if isinstance(value, (list, tuple)) and len(value) == n:
            return list(value[lo:hi])
        return value
    return {k: part(v) for k, v in (meta or {}).items()}


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
        rewards, components = checked_output(reward_fn(samples, targets, meta), n, reward_fn, tokens.device)
    else:
        with ThreadPoolExecutor(max_workers=1, thread_name_prefix="score", initializer=same_device_as,
                                initargs=(tokens.device,)) as worker:
            chunks = []
            for lo in range(0, n, chunk_size):
                hi = min(lo + chunk_size, n)
                images = tokenizer.decode_code(tokens[lo:hi])
                part = None if targets is None else targets[lo:hi]  # no targets: data without images
                chunks.append((images, worker.submit(reward_fn, images, part, chunk_meta(meta, n, lo, hi))))
            decoded = phase_time(tokens.device)
            results = [checked_output(future.result(), len(images), reward_fn, tokens.device)
                       for images, future in chunks]
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
