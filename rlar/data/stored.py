"""Image data read from files: the train split decoded on access, the eval split kept in memory as uint8."""

from __future__ import annotations

import os
from collections.abc import Iterator, Sequence

import torch
from torch.utils.data import DataLoader

from rlar.data.batches import ImageData, holdout_split, random_rows
from rlar.data.decode import DECODE_BATCH, MODES, decode_all, loader_generator, warn_unreadable
from rlar.data.on_access import ReplacedCaptions, SourceRows, TrainImages, chunks, collate

Split = tuple[Sequence, torch.Tensor, Sequence | None]  # (image sources, labels [N], captions or None)


def to_unit_range(images: torch.Tensor) -> torch.Tensor:
    """uint8 ``[..., C, H, W]`` in [0, 255] -> float32 in [-1, 1]."""
    return images.float() / 127.5 - 1.0


def subset_rows(n: int, max_images: int | None, seed: int, key: str = "data.max_images") -> torch.Tensor:
    """Row indices ``[m]``: all ``n`` rows, or ``max_images`` of them drawn at random (fixed by ``seed``), sorted;
    ``key``: the option that gave ``max_images``, named in the error for one below 1."""
    if max_images is not None and max_images < 1:
        raise ValueError(f"{key} must be >= 1 or null (all of them), got {max_images}")
    return random_rows(n, max_images, seed)


def in_random_order(split: Split, seed: int) -> Split:
    """``split`` in a fixed random order (``seed``), its labels and captions with their images."""
    sources, labels, captions = split
    order = torch.randperm(len(labels), generator=torch.Generator().manual_seed(seed))  # [N]
    return SourceRows(sources, order), labels[order], None if captions is None else SourceRows(captions, order)


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


def physical_memory() -> int | None:
    """This machine's physical memory in bytes; None where the system does not say."""
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (AttributeError, ValueError, OSError):
        return None


def check_fits_in_memory(count: int, channels: int, image_size: int) -> None:
    """Refuse to decode a whole train split of ``count`` images that could not fit in this machine's memory as
    float32, before decoding any of it, naming what reads a split whole and what to do instead."""
    need, have = count * channels * image_size**2 * 4, physical_memory()
    if have is not None and need > have:
        raise ValueError(
            f"the whole train split was asked for at once: {count} images of {channels}x{image_size}x{image_size} "
            f"take {need / 2**30:.1f} GiB as float32, more than this machine's {have / 2**30:.1f} GiB of memory. What "
            "reads the split whole: the embedded tokenizer and prior (built on it when not cached). Give a public "
            "tokenizer and policy checkpoint, or train on fewer images (data.max_images=N)")


class StoredImageData(ImageData):
    """Images read from files. The train split is decoded on access: :meth:`train_batches` reads each batch in
    ``num_workers`` DataLoader workers (0: in this process), so memory does not grow with the split; ``train_images``
    decodes the whole split each time it is read (for sets small enough to train the embedded tokenizer and prior
    on; refused before decoding when it could not fit in memory). The eval split is decoded once and kept
    as uint8 ``[N_eval, C, S, S]`` (its unreadable files left out). ``skipped`` counts the unreadable files met so
    far, ``skipped_paths`` names them; ``replaced`` maps the train position of each unreadable file met so far to
    its replacement's. Captions, when the data has them: the train split's read on access (an unreadable train
    image's caption is its replacement's, once a batch has read it: :class:`ReplacedCaptions`), the eval split's
    read once, without those of the images left out."""

    train_items: TrainImages
    eval_uint8: torch.Tensor

    def __init__(self, image_size: int, channels: int, num_workers: int):
        if channels not in MODES:
            raise ValueError(f"data.channels must be 1 (grayscale) or 3 (RGB), got {channels}")
        self.image_size, self.channels, self.num_workers = image_size, channels, num_workers
        self.skipped_paths: list[str] = []
        self.replaced: dict[int, int] = {}  # train position -> the position its image was read from

    @property
    def skipped(self) -> int:
        return len(self.skipped_paths)

    @property
    def train_images(self) -> torch.Tensor:
        check_fits_in_memory(len(self.train_labels), self.channels, self.image_size)
        n = len(self.train_labels)
        images = torch.empty(n, self.channels, self.image_size, self.image_size)  # [N, C, S, S]
        positions = chunks(n, DECODE_BATCH)
        for idx, batch in zip(positions, self.train_batches(positions), strict=True):
            images[idx] = batch
        return images

    @property
    def eval_images(self) -> torch.Tensor:
        return to_unit_range(self.eval_uint8)

    def eval_images_of(self, items: torch.Tensor | slice) -> torch.Tensor:
        """Only ``items`` converted to floats: the whole split in fp32 is 4x its bytes (82 GB for 50,000 at 256 px)."""
        return to_unit_range(self.eval_uint8[items])

    def train_batches(self, index_batches: list[torch.Tensor]) -> Iterator[torch.Tensor]:
        """Decode each index batch in the DataLoader (a new one for each call: its workers live for one epoch; its
        own generator, so torch's global random stream is not read, see :func:`loader_generator`)."""
        loader = DataLoader(self.train_items, batch_sampler=index_batches, num_workers=self.num_workers,
                            collate_fn=collate, generator=loader_generator())
        for idx, (images, read_from, failed) in zip(index_batches, loader, strict=True):
            self.replaced.update((p, q) for p, q in zip(idx.tolist(), read_from.tolist(), strict=True) if p != q)
            for name, reason in failed:
                if name not in self.skipped_paths:
                    warn_unreadable(name, reason)
                    self.skipped_paths.append(name)
            yield to_unit_range(images)

    def store(self, train: Split, held_out: Split | None, eval_fraction: float, split_seed: int,
              num_classes: int | None, where: str) -> None:
        """Index ``train = (sources, labels [N], captions or None)`` (each source a ``(file or bytes, name)``, each
        caption read on access) for reading on access and decode ``held_out`` as the eval split, in a fixed random
        order (``split_seed``; its captions read now); without one, hold out ``eval_fraction`` of train (fixed by
        ``split_seed``). Sets ``num_classes`` (see :func:`count_classes`)."""
        sources, labels, captions = train
        if len(labels) == 0:
            raise ValueError(f"{where} has no images")
        if held_out is None:
            train_idx, eval_idx = holdout_split(len(labels), eval_fraction, split_seed)
            if len(eval_idx) == 0 or len(train_idx) == 0:
                raise ValueError(f"data.eval_fraction={eval_fraction} of the {len(labels)} images of {where} leaves "
                                 "an empty split; use more images or another eval_fraction")
            held_out = (SourceRows(sources, eval_idx), labels[eval_idx],
                        None if captions is None else SourceRows(captions, eval_idx))
            sources, labels = SourceRows(sources, train_idx), labels[train_idx]
            captions = None if captions is None else SourceRows(captions, train_idx)
        else:  # a folder or a saved split lists its images class by class, and eval.max_items takes the first ones
            held_out = in_random_order(held_out, split_seed)
        count_classes(torch.cat([labels, held_out[1]]), num_classes, where)  # bad labels: refused before decoding
        images, kept, skipped = decode_all(held_out[0], self.image_size, self.channels, self.num_workers,
                                           f"the eval split of {where}")
        self.skipped_paths += skipped
        self.eval_uint8, self.eval_labels = images, held_out[1][kept]
        if held_out[2] is not None:
            self.eval_captions = [held_out[2][i] for i in kept.tolist()]
        self.train_items = TrainImages(sources, labels, self.image_size, self.channels, where)
        self.train_labels = labels
        self.train_captions = None if captions is None else ReplacedCaptions(captions, self.replaced)
        self.num_classes = count_classes(torch.cat([labels, self.eval_labels]), num_classes, where)
