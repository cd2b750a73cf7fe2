"""Free-running samples of a policy for given class labels, decoded to images."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import numpy as np
import torch

from rlar.contracts import Policy, Tokenizer
from rlar.eval.image_arrays import stacked_uint8
from rlar.rollout.parallel_decoding import parallel_generations
from rlar.rollout.sampling import sample_multiple_generations


def class_balanced_labels(num_samples: int, num_classes: int) -> torch.Tensor:
    """``[num_samples]`` labels 0, 1, ..., K-1, 0, 1, ...: every class ``num_samples // K`` or one more times."""
    return torch.arange(num_samples) % num_classes


def generate_images(policy: Policy, tokenizer: Tokenizer, labels: torch.Tensor, sampling: dict, batch_size: int,
                    generator: torch.Generator, device, autocast=None) -> torch.Tensor:
    """One sample per label of ``labels [N]``, ``batch_size`` at a time, under ``sampling`` (``temperature``,
    ``cfg_scale``): images ``[N, C, H, W]`` in [-1, 1] on the CPU. ``autocast``: the context of the policy's
    passes (the tokenizer decodes outside it)."""
    return torch.cat(list(generated_batches(policy, tokenizer, labels, sampling, batch_size, generator, device,
                                            autocast)))


def generate_uint8(policy: Policy, tokenizer: Tokenizer, labels: torch.Tensor, sampling: dict, batch_size: int,
                   generator: torch.Generator, device, autocast=None, image_size: int | None = None) -> np.ndarray:
    """:func:`generate_images` as uint8 ``[N, H, W, 3]`` (resized to ``image_size`` where given:
    ``rlar.eval.image_arrays.resized``), each batch converted as it comes: never the whole set in float32 (4x the
    bytes: about 40 GB for 50,000 samples at 256 px)."""
    return stacked_uint8(generated_batches(policy, tokenizer, labels, sampling, batch_size, generator, device,
                                           autocast), len(labels), image_size)


@torch.no_grad()  # around each step of the generator, not around the caller's code between them
def generated_batches(policy: Policy, tokenizer: Tokenizer, labels: torch.Tensor, sampling: dict, batch_size: int,
                      generator: torch.Generator, device, autocast=None) -> Iterator[torch.Tensor]:
    """The samples of :func:`generate_images` a batch at a time: images ``[b, C, H, W]`` on the CPU. The policy is
    in eval mode until the last batch (or the caller stops), then back to its mode."""
    autocast = autocast or contextlib.nullcontext
    was_training = policy.training
    policy.eval()
    try:
        for y in labels.to(device).split(batch_size):
            prefix = torch.zeros(len(y), 0, dtype=torch.long, device=device)
            with autocast():
                if policy.decodes_in_parallel:
                    tokens = parallel_generations(policy, (prefix, y), policy.block_size, 1, generator=generator,
                                                  **sampling)[0]
                else:
                    tokens = sample_multiple_generations(policy, (prefix, y), policy.block_size, 1,
                                                         generator=generator, **sampling)[0]  # [b, T]
            yield tokenizer.decode_code(tokens).float().cpu()  # [b, C, H, W]
    finally:
        policy.train(was_training)
