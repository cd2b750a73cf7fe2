"""Image datasets: train/eval labels, images (in memory or read on access) and an endless shuffled batch stream."""

from __future__ import annotations

from collections.abc import Iterator, Sequence

import torch


class ImageData:
    """Subclasses set ``train_images/eval_images [N, C, H, W]`` in [-1, 1], ``train_labels/eval_labels [N]``,
    ``num_classes``, ``channels`` and ``image_size``. Data read from files (``rlar.data.stored``) decodes the train
    images on access instead: :meth:`train_batches` per batch, ``train_images`` (the whole split) only when asked.
    Data with captions sets ``train_captions/eval_captions``: a caption per image (``rlar.data.captions``; a
    sequence that may read on access); a prompt-only data set (``rlar.data.prompts``) has captions and no images
    (``train_images/eval_images`` None)."""

    train_images: torch.Tensor | None
    train_labels: torch.Tensor
    eval_images: torch.Tensor | None
    eval_labels: torch.Tensor
    num_classes: int
    channels: int
    image_size: int
    train_captions: Sequence[str] | None = None
    eval_captions: Sequence[str] | None = None

    def captions_of(self, indices: torch.Tensor) -> list[str] | None:
        """The train captions of the items ``indices [B]`` (a batch's third element), or None without captions."""
        if self.train_captions is None:
            return None
        return [self.train_captions[i] for i in indices.tolist()]

    def eval_images_of(self, items: torch.Tensor | slice) -> torch.Tensor | None:
        """The eval images ``[M, C, H, W]`` in [-1, 1] of ``items`` (indices ``[M]`` or a slice); None without
        images."""
        return None if self.eval_images is None else self.eval_images[items]

    def train_batches(self, index_batches: list[torch.Tensor]) -> Iterator[torch.Tensor]:
        """The train images ``[B, C, H, W]`` in [-1, 1] of each index batch ``[B]`` of ``index_batches``, in order."""
        return (self.train_images[idx] for idx in index_batches)

    def batches(self, batch_size: int, generator: torch.Generator, start: int = 0, share: slice = slice(None)
                ) -> Iterator[tuple[torch.Tensor, torch.Tensor, torch.Tensor]]:
        """Shuffled ``(images [b, C, H, W], labels [B], indices [B])`` batches of the train split, epoch after
        epoch; ``indices`` identify the images (for per-image statistics). Only the rows ``share`` of each batch
        have their images read (a process's share under data parallelism: b = B / world; all of them by default),
        while labels and indices cover the whole batch. An epoch's order is drawn from ``generator`` when its first
        batch is asked for; the stream starts at its batch ``start`` (a resumed run's next batch)."""
        n = len(self.train_labels)
        if not 0 < batch_size <= n:
            raise ValueError(f"batch size {batch_size} must be in [1, {n}] (the train split's size)")
        epochs, skip = divmod(start, n // batch_size)
        for _ in range(epochs):
            torch.randperm(n, generator=generator)
        while True:
            order = torch.randperm(n, generator=generator)
            starts = range(skip * batch_size, n - batch_size + 1, batch_size)
            index_batches = [order[i : i + batch_size] for i in starts]
            shares = [idx[share] for idx in index_batches]
            for idx, images in zip(index_batches, self.train_batches(shares), strict=True):
                yield images, self.train_labels[idx], idx
            skip = 0


def random_rows(n: int, limit: int | None, seed: int) -> torch.Tensor:
    """Positions ``[min(n, limit)]``, ascending: all ``n`` (``limit`` None or >= n), else ``limit`` of them drawn
    without replacement under ``seed``, the same on every call (a split listed class by class so gives every class
    its share, not the first classes alone)."""
    if limit is None or limit >= n:
        return torch.arange(n)
    return torch.randperm(n, generator=torch.Generator().manual_seed(seed))[:limit].sort().values


def holdout_split(n: int, fraction: float, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """A fixed random split of ``n`` items: ``(train indices, eval indices)``, ``round(fraction * n)`` for eval."""
    if not 0.0 < fraction < 1.0:
        raise ValueError(f"data.eval_fraction must be in (0, 1), got {fraction}")
    order = torch.randperm(n, generator=torch.Generator().manual_seed(seed))
    n_eval = int(round(fraction * n))
    return order[n_eval:], order[:n_eval]
