"""Image data decoded from files and kept in memory as uint8 (a quarter of float32), read as [-1, 1] floats."""

from __future__ import annotations

from collections.abc import Sequence

import torch

from rlar.data.batches import ImageData, holdout_split
from rlar.data.decode import decode_all


def to_unit_range(images: torch.Tensor) -> torch.Tensor:
    """uint8 ``[..., C, H, W]`` in [0, 255] -> float32 in [-1, 1]."""
    return images.float() / 127.5 - 1.0


def subset_rows(n: int, max_images: int | None, seed: int) -> torch.Tensor:
    """Row indices ``[m]``: all ``n`` rows, or ``max_images`` of them drawn at random (fixed by ``seed``), sorted."""
    if max_images is not None and max_images < 1:
        raise ValueError(f"data.max_images must be >= 1 or null (all images), got {max_images}")
    if max_images is None or max_images >= n:
        return torch.arange(n)
    return torch.randperm(n, generator=torch.Generator().manual_seed(seed))[:max_images].sort().values


def count_classes(labels: torch.Tensor, num_classes: int | None, where: str) -> int:
    """The number of classes: ``num_classes`` when given (labels must lie in [0, num_classes)), else the number of
    distinct labels, which must then be exactly 0..K-1 (the policy embeds class ids)."""
    lo, hi = int(labels.min()), int(labels.max())
    if num_classes is not None:
        if lo < 0 or hi >= num_classes:
            raise ValueError(f"labels of {where} range over [{lo}, {hi}], outside [0, data.num_classes={num_classes}); "
                             f"set data.num_classes>={hi + 1} or relabel the data")
        return num_classes
    distinct = labels.unique()  # sorted
    if not torch.equal(distinct, torch.arange(len(distinct))):
        shown = distinct[:10].tolist()
        raise ValueError(f"labels of {where} must be the class ids 0..K-1; found {len(distinct)} distinct values "
                         f"{shown}{' ...' if len(distinct) > 10 else ''}; relabel them 0..K-1, or set "
                         f"data.num_classes>={hi + 1} when the ids are a subset of a larger class set (labels >= 0)")
    return len(distinct)


class StoredImageData(ImageData):
    """Images held as uint8 ``[N, C, S, S]``: ``train_images`` / ``eval_images`` convert the whole split on each
    access, :meth:`batches` only the batch. ``skipped`` counts the unreadable files, ``skipped_paths`` names them."""

    train_uint8: torch.Tensor
    eval_uint8: torch.Tensor

    def __init__(self, image_size: int, channels: int, num_workers: int):
        self.image_size, self.channels, self.num_workers = image_size, channels, num_workers
        self.skipped_paths: list[str] = []

    @property
    def skipped(self) -> int:
        return len(self.skipped_paths)

    @property
    def train_images(self) -> torch.Tensor:
        return to_unit_range(self.train_uint8)

    @property
    def eval_images(self) -> torch.Tensor:
        return to_unit_range(self.eval_uint8)

    def train_batch(self, idx: torch.Tensor) -> torch.Tensor:
        return to_unit_range(self.train_uint8[idx])

    def decode(self, sources: Sequence, labels: torch.Tensor, where: str) -> tuple[torch.Tensor, torch.Tensor]:
        """Decode ``sources`` (each ``(source, name)``) with their ``labels [N]``; unreadable ones are left out."""
        images, kept, skipped = decode_all(sources, self.image_size, self.channels, self.num_workers, where)
        self.skipped_paths += skipped
        return images, labels[kept]

    def store(self, train: tuple[torch.Tensor, torch.Tensor], held_out: tuple[torch.Tensor, torch.Tensor] | None,
              eval_fraction: float, split_seed: int, num_classes: int | None, where: str) -> None:
        """Keep ``train = (images, labels)`` and ``held_out`` as the eval split; without one, hold out
        ``eval_fraction`` of train (fixed by ``split_seed``). Sets ``num_classes`` (see :func:`count_classes`)."""
        images, labels = train
        if held_out is None:
            train_idx, eval_idx = holdout_split(len(images), eval_fraction, split_seed)
            if len(eval_idx) == 0 or len(train_idx) == 0:
                raise ValueError(f"data.eval_fraction={eval_fraction} of the {len(images)} images of {where} leaves "
                                 "an empty split; use more images or another eval_fraction")
            held_out = images[eval_idx], labels[eval_idx]
            images, labels = images[train_idx], labels[train_idx]
        self.train_uint8, self.train_labels = images, labels
        self.eval_uint8, self.eval_labels = held_out
        self.num_classes = count_classes(torch.cat([labels, held_out[1]]), num_classes, where)
