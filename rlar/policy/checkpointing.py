"""Activation checkpointing of the training pass (``policy.grad_checkpointing``): each transformer block's
activations are dropped after the forward pass and recomputed in the backward pass (``torch.utils.checkpoint``)."""

from __future__ import annotations

import torch
from torch import nn
from torch.utils.checkpoint import checkpoint


def checkpoints_blocks(module: nn.Module) -> bool:
    """Whether ``module``'s pass checkpoints its blocks now: ``grad_checkpointing`` on, in training mode, with
    gradients enabled (sampling, evaluation and the KL reference never checkpoint)."""
    return module.grad_checkpointing and module.training and torch.is_grad_enabled()


def call_block(block: nn.Module, *args, checkpointed: bool):
    """``block(*args)``, under non-reentrant ``torch.utils.checkpoint`` when ``checkpointed``."""
    return checkpoint(block, *args, use_reentrant=False) if checkpointed else block(*args)
