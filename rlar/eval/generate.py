"""Free-running samples of a policy for given class labels, decoded to images."""

from __future__ import annotations

import contextlib

import torch

from rlar.contracts import Policy, Tokenizer
from rlar.rollout.parallel_decoding import parallel_generations
from rlar.rollout.sampling import sample_multiple_generations


def class_balanced_labels(num_samples: int, num_classes: int) -> torch.Tensor:
    """``[num_samples]`` labels 0, 1, ..., K-1, 0, 1, ...: every class ``num_samples // K`` or one more times."""
    return torch.arange(num_samples) % num_classes


@torch.no_grad()
def generate_images(policy: Policy, tokenizer: Tokenizer, labels: torch.Tensor, sampling: dict, batch_size: int,
                    generator: torch.Generator, device, autocast=None) -> torch.Tensor:
    """One sample per label of ``labels [N]``, ``batch_size`` at a time, under ``sampling`` (``temperature``,
    ``cfg_scale``): images ``[N, C, H, W]`` in [-1, 1] on the CPU. ``autocast``: the context of the policy's
    passes (the tokenizer decodes outside it)."""
    autocast = autocast or contextlib.nullcontext
    was_training = policy.training
    policy.eval()
    images = []
    for y in labels.to(device).split(batch_size):
        prefix = torch.zeros(len(y), 0, dtype=torch.long, device=device)
        with autocast():
            if policy.decodes_in_parallel:
                tokens = parallel_generations(policy, (prefix, y), policy.block_size, 1, generator=generator,
                                              **sampling)[0]
            else:
                tokens = sample_multiple_generations(policy, (prefix, y), policy.block_size, 1,
                                                     generator=generator, **sampling)[0]  # [b, T]
        images.append(tokenizer.decode_code(tokens).float().cpu())  # [b, C, H, W]
    policy.train(was_training)
    return torch.cat(images)
