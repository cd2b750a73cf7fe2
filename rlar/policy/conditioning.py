"""Class conditions shared by every policy: ``None`` or a negative label means the null (unconditional) class."""

from __future__ import annotations

import torch


def class_ids(labels: torch.Tensor | None, batch: int, null_class: int, device) -> torch.Tensor:
    """Labels ``[N]`` with ``None`` / negative entries replaced by ``null_class``: ``[N]`` long."""
    if labels is None:
        return torch.full((batch,), null_class, dtype=torch.long, device=device)
    return torch.where(labels < 0, torch.full_like(labels, null_class), labels)
