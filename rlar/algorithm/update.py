"""The update skeleton every algorithm shares: inner epochs over group-preserving minibatches."""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass

import torch

from rlar.sampling import token_logprobs


@dataclass
class Rollout:
    """One iteration's samples: G generations per item, adjacent."""

    tokens: torch.Tensor  # [N, T] long
    logprobs: torch.Tensor  # [N, T] fp32, log-prob of each token at sampling time (0 on the prefix)
    labels: torch.Tensor | None  # [N] class ids, or None
    mask: torch.Tensor  # [N, T] bool, True where the token is an action (sampled, not given)


def group_minibatches(n: int, group_size: int, minibatch_size: int, generator: torch.Generator):
    """Shuffled index minibatches of ``minibatch_size`` that never split a group of ``group_size`` rows."""
    groups = torch.randperm(n // group_size, generator=generator)
    per_batch = max(1, minibatch_size // group_size)
    for i in range(0, len(groups), per_batch):
        g = groups[i : i + per_batch]
        yield (g[:, None] * group_size + torch.arange(group_size)).flatten()


def policy_update(policy, optimizer, algorithm, rollout: Rollout, adv: torch.Tensor, sampling: dict,
                  max_grad_norm: float | None, generator: torch.Generator, autocast=None) -> dict[str, float]:
    """Run ``algorithm.epochs`` passes; one optimizer step per minibatch. Returns mean stats.

    ``policy/ratio_max_abs_dev`` is measured on the first minibatch before any step: it must be ~0.
    """
    policy.train()
    sums: dict[str, float] = defaultdict(float)
    steps = 0
    first = None
    for _ in range(algorithm.epochs):
        for idx in group_minibatches(len(adv), algorithm.num_generations, algorithm.minibatch_size, generator):
            labels = None if rollout.labels is None else rollout.labels[idx]
            with autocast() if autocast else torch.autocast("cpu", enabled=False):
                logp_all = token_logprobs(policy, rollout.tokens[idx], labels, **sampling)  # [n, T, V] fp32
            logp = logp_all.gather(-1, rollout.tokens[idx][..., None])[..., 0]  # [n, T]
            mask = rollout.mask[idx]
            loss, stats = algorithm.loss(logp, rollout.logprobs[idx], adv[idx], mask)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            grad_norm = torch.nn.utils.clip_grad_norm_(policy.parameters(), max_grad_norm or float("inf"))
            optimizer.step()
            with torch.no_grad():
                entropy = -(logp_all.exp() * logp_all).sum(-1)[mask].mean()
            stats = {**stats, "loss/policy": loss.item(), "policy/entropy": float(entropy),
                     "policy/grad_norm": float(grad_norm)}
            if first is None:
                first = stats.get("policy/ratio_max_abs_dev")
            for key, value in stats.items():
                sums[key] += value
            steps += 1
    out = {key: value / steps for key, value in sums.items()}
    if first is not None:
        out["policy/ratio_max_abs_dev"] = first
    out["policy/optimizer_steps"] = float(steps)
    return out
