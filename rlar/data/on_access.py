"""The train split decoded on access: a DataLoader dataset over image sources, with a fixed rule for unreadable files.

Nothing is decoded ahead: an item is read (in a DataLoader worker, or in this process) when a batch asks for it.
A file that cannot be decoded is replaced by the next readable image of the same class (positions p+1, p+2, ...,
wrapping around), so a batch keeps its labels and the replacement depends only on the files, never on the workers.
Its caption goes with it: :class:`ReplacedCaptions` reads the replacement's.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence

import torch
from torch.utils.data import Dataset

from rlar.data.decode import load_image


class SourceRows:
    """The view ``sources[rows[i]]`` of a sequence (image sources ``(source, name)``, or captions; ``rows [n]``, one
    int64 buffer: no Python object per row for the DataLoader workers to copy)."""

    def __init__(self, sources: Sequence, rows: torch.Tensor):
        self.sources, self.rows = sources, rows.numpy()

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, i: int):
        return self.sources[int(self.rows[i])]


class TrainImages(Dataset):
    """Position ``p`` -> ``(uint8 [C, S, S], the position it was read from (p, or its replacement's), [(name,
    reason)] of the unreadable files met on the way)``.

    ``sources``: each item a ``(source, name)`` for PIL; ``labels [n]``; ``where`` names the data in messages.
    """

    def __init__(self, sources: Sequence, labels: torch.Tensor, image_size: int, channels: int, where: str):
        self.sources, self.labels = sources, labels.numpy()
        self.image_size, self.channels, self.where = image_size, channels, where

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, p: int) -> tuple[torch.Tensor, int, list[tuple[str, str]]]:
        n, label = len(self.labels), self.labels[p]
        failed: list[tuple[str, str]] = []
        for q in range(p, p + n):
            if self.labels[q % n] != label:
                continue
            source, name = self.sources[q % n]
            try:
                return load_image(source, self.image_size, self.channels), q % n, failed
            except Exception as e:  # PIL raises many types for bad files; any of them means "try the next one"
                failed.append((name, f"{type(e).__name__}: {e}"))
        name, reason = failed[0]
        raise ValueError(f"no readable image of class {label} in {self.where}: all {len(failed)} failed to decode, "
                         f"e.g. {name}: {reason}")


def collate(items: list) -> tuple[torch.Tensor, torch.Tensor, list[tuple[str, str]]]:
    """-> (images uint8 ``[B, C, S, S]``, the positions ``[B]`` they were read from, the ``(name, reason)`` of every
    unreadable file met)."""
    return (torch.stack([image for image, _, _ in items]), torch.tensor([q for _, q, _ in items], dtype=torch.long),
            [f for _, _, failed in items for f in failed])


class ReplacedCaptions:
    """Position ``p`` -> the caption of the image read for it: the caption of its replacement ``replaced[p]`` once
    its file was met unreadable (``replaced``: {p: q}, filled as batches are read), else its own. A caption asked
    before its image was read is its own file's."""

    def __init__(self, captions: Sequence[str], replaced: dict[int, int]):
        self.own, self.replaced = captions, replaced  # own: each file's caption, whatever has been read

    def __len__(self) -> int:
        return len(self.own)

    def __getitem__(self, p: int) -> str:
        p = int(p)
        return self.own[self.replaced.get(p, p)]

    def __iter__(self) -> Iterator[str]:
        return (self[p] for p in range(len(self)))


def chunks(n: int, size: int) -> list[torch.Tensor]:
    """Positions ``0..n-1`` in consecutive index batches of ``size`` (the last may be shorter)."""
    return list(torch.arange(n).split(size))

