"""Evaluation: free-running samples for the held-out conditions, scored by the training reward."""

from __future__ import annotations

import torch

from rlar.sampling import sample_multiple_generations


@torch.no_grad()
def evaluate(policy, tokenizer, reward_fn, data, eval_cfg, sampling: dict, device) -> dict[str, float]:
    """Mean reward of ``eval_cfg.samples_per_item`` samples for each held-out image (class condition, no prefix).

    A fixed seed makes the number a function of the policy alone, so before/after RL compare like for like.
    """
    was_training = policy.training
    policy.eval()
    generator = torch.Generator().manual_seed(eval_cfg.seed)
    images = data.eval_images[: eval_cfg.max_items or None].to(device)
    labels = data.eval_labels[: eval_cfg.max_items or None].to(device)
    k = eval_cfg.samples_per_item
    rewards = []
    for x, y in zip(images.split(eval_cfg.batch_size), labels.split(eval_cfg.batch_size), strict=True):
        prefix = torch.zeros(len(x), 0, dtype=torch.long, device=device)
        tokens, _ = sample_multiple_generations(policy, (prefix, y), policy.block_size, k,
                                                generator=generator, **sampling)
        reward, _ = reward_fn(tokenizer.decode_code(tokens), x.repeat_interleave(k, 0), {"labels": y})
        rewards.append(reward)
    policy.train(was_training)
    rewards = torch.cat(rewards)
    finite = rewards[rewards.isfinite()]
    return {"eval/reward": float(finite.mean()) if finite.numel() else float("nan"),
            "eval/reward_std": float(finite.std()) if finite.numel() > 1 else 0.0,
            "eval/nan_count": float((~rewards.isfinite()).sum())}
