"""The update of an algorithm that trains on data pairs (CCA, ``rlar.algorithm.cca``): one optimizer step on the
batch's ground-truth codes under their own labels and under mismatched ones, against the frozen prior."""

from __future__ import annotations

import contextlib
from collections import defaultdict

import torch

from rlar.algorithm.update import clip_and_step, stepped_params
from rlar.contracts import DataPairAlgorithm
from rlar.rollout.sampling import policy_logprobs
from rlar.runtime.data_parallel import gradient_sync


def sequence_logprobs(policy, codes: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """``log pi(codes | labels)`` ``[N]``: teacher-forced token log-probs of ``codes [N, T]`` (temperature 1, no
    guidance), summed over the T tokens."""
    logp, _ = policy_logprobs(policy, codes, labels)  # [N, T, V]
    return logp.gather(-1, codes[..., None])[..., 0].sum(1)


def pair_update(policy, ref_policy, optimizer, algorithm: DataPairAlgorithm, codes: torch.Tensor,
                labels: torch.Tensor, negatives: torch.Tensor, max_grad_norm: float | None,
                autocast=None) -> dict[str, float]:
    """One optimizer step on the pairs of ``codes [b, T]`` with ``labels [b]`` and ``negatives [b]`` (mismatched
    labels): ``algorithm.minibatch_size`` images per forward pass (their positive and negative rows together), the
    gradients of the whole batch accumulated (a minibatch weighs by its share of the batch). Returns the batch's
    stats (the loss's, each weighted by its minibatch's share, and ``policy/grad_norm``).

    ``policy`` may be DDP/FSDP2-wrapped: gradients are all-reduced only in the last minibatch's backward pass.
    """
    policy.train()
    autocast = autocast or contextlib.nullcontext
    params = stepped_params(optimizer)
    n, size = len(codes), algorithm.minibatch_size
    chunks = list(zip(codes.split(size), labels.split(size), negatives.split(size), strict=True))
    sums: dict[str, float] = defaultdict(float)
    optimizer.zero_grad(set_to_none=True)
    for i, (x, pos, neg) in enumerate(chunks):
        rows, conditions = torch.cat([x, x]), torch.cat([pos, neg])  # [2m, T], [2m]: positives then negatives
        with torch.no_grad(), autocast():
            ref = sequence_logprobs(ref_policy, rows, conditions)  # [2m]
        with gradient_sync((policy,), enabled=i == len(chunks) - 1):  # forward and backward inside
            with autocast():
                logp = sequence_logprobs(policy, rows, conditions)  # [2m]
            (logp_pos, logp_neg), (ref_pos, ref_neg) = logp.chunk(2), ref.chunk(2)  # [m] each
            loss, stats = algorithm.loss(logp_pos, ref_pos, logp_neg, ref_neg)
            (loss * len(x) / n).backward()
        for key, value in stats.items():
            sums[key] += value * len(x) / n
    return {**sums, "policy/grad_norm": clip_and_step(params, optimizer, max_grad_norm)}
