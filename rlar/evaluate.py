"""Evaluation: free-running samples for the held-out conditions, scored by the training reward."""

from __future__ import annotations

import contextlib

import torch

from rlar import distributed
from rlar.sampling import sample_multiple_generations


def rank_share(images: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """This rank's contiguous share of the held-out items, padded to the same length on every rank (so that sharded
    models run the same collectives everywhere): ``(images [m, ...], labels [m], real [m] bool)``."""
    rank, world = distributed.rank(), distributed.world_size()
    per_rank = -(-len(images) // world)
    x, y = images[rank * per_rank:][:per_rank], labels[rank * per_rank:][:per_rank]
    real = torch.arange(per_rank) < len(x)
    pad = per_rank - len(x)
    return torch.cat([x, images[:pad]]), torch.cat([y, labels[:pad]]), real


@torch.no_grad()
def evaluate(policy, tokenizer, reward_fn, data, eval_cfg, sampling: dict, device, autocast=None
             ) -> dict[str, float]:
    """Mean reward of ``eval_cfg.samples_per_item`` samples for each held-out image (class condition, no prefix).

    A fixed seed makes the number a function of the policy alone, so before/after RL compare like for like.
    Under torchrun each rank samples its share of the items and the rewards are gathered. ``autocast``: the
    context of the policy's passes (the tokenizer decodes outside it, in fp32).
    """
    autocast = autocast or contextlib.nullcontext
    was_training = policy.training
    policy.eval()
    generator = torch.Generator().manual_seed(eval_cfg.seed + distributed.rank())
    images, labels, real = rank_share(data.eval_images[: eval_cfg.max_items or None],
                                      data.eval_labels[: eval_cfg.max_items or None])
    images, labels = images.to(device), labels.to(device)
    k = eval_cfg.samples_per_item
    rewards = []
    for x, y in zip(images.split(eval_cfg.batch_size), labels.split(eval_cfg.batch_size), strict=True):
        prefix = torch.zeros(len(x), 0, dtype=torch.long, device=device)
        with autocast():
            tokens, _ = sample_multiple_generations(policy, (prefix, y), policy.block_size, k,
                                                    generator=generator, **sampling)
        reward, _ = reward_fn(tokenizer.decode_code(tokens), x.repeat_interleave(k, 0), {"labels": y})
        rewards.append(reward)
    policy.train(was_training)
    real = distributed.gather_rows(real.to(device, torch.uint8).repeat_interleave(k)).bool()
    rewards = distributed.gather_rows(torch.cat(rewards))[real]
    finite = rewards[rewards.isfinite()]
    return {"eval/reward": float(finite.mean()) if finite.numel() else float("nan"),
            "eval/reward_std": float(finite.std()) if finite.numel() > 1 else 0.0,
            "eval/nan_count": float((~rewards.isfinite()).sum())}
