"""Decode image files: open with PIL, resize the shorter side and center-crop as ADM's evaluation suite does
(:func:`center_crop`), uint8 CHW; a whole list through a DataLoader (:func:`decode_all`, for the eval split).

A file that cannot be decoded is reported (a warning naming it and the reason) and left out, never raised.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
import torchvision.transforms.v2.functional as TF
from PIL import Image, ImageOps
from torch.utils.data import DataLoader, Dataset
from tqdm.auto import tqdm

log = logging.getLogger(__name__)

MODES = {1: "L", 3: "RGB"}  # channels -> PIL mode
DECODE_BATCH = 64
LOADER_SEED = 0  # of each DataLoader's own generator (:func:`loader_generator`)
PREPROCESSING = "adm_center_crop"  # in the data's cache fingerprint: another resize would key other caches


def load_image(source: Any, image_size: int, channels: int) -> torch.Tensor:
    """``source`` (a path or a binary file object) -> uint8 ``[channels, image_size, image_size]``."""
    if source is None:
        raise ValueError("the dataset holds no image for this row")
    with Image.open(source) as image:  # turned upright as its EXIF orientation says (a camera's photo), as viewers do
        image = to_8bit(ImageOps.exif_transpose(image)).convert(MODES[channels])  # a truncated file fails here
    return TF.pil_to_tensor(center_crop(image, image_size))


def center_crop(image: Image.Image, size: int) -> Image.Image:
    """The ``size`` x ``size`` center of ``image``, as ADM's preprocessing takes it (LlamaGen, ARPG and VA-π train
    and evaluate on it, and FID reference batches are made with it): halved with a box filter while its shorter side
    is at least ``2 * size``, then resized (bicubic) so that the shorter side is ``size``, each side rounded, and
    cropped at offsets rounded down. (torchvision's resize floors the longer side and rounds the offsets: a 1024 x 683
    image becomes 383 x 256, not 384 x 256.)"""
    while min(image.size) >= 2 * size:
        image = image.resize((image.width // 2, image.height // 2), resample=Image.Resampling.BOX)
    scale = size / min(image.size)
    image = image.resize((round(image.width * scale), round(image.height * scale)),
                         resample=Image.Resampling.BICUBIC)
    left, top = (image.width - size) // 2, (image.height - size) // 2
    return image.crop((left, top, left + size, top + size))


def to_8bit(image: Image.Image) -> Image.Image:
    """A 16-bit grayscale image (PIL's ``I;16*`` and ``I`` modes) scaled to 8 bits, 65535 -> 255; others as they are.

    PIL's own conversion clips values above 255, which turns a 16-bit image black and white.
    """
    if image.mode != "I" and not image.mode.startswith("I;16"):
        return image
    pixels = np.asarray(image, dtype=np.float64)  # [H, W] in [0, 65535]
    return Image.fromarray((pixels / 257.0).round().clip(0, 255).astype(np.uint8))  # [H, W] uint8: mode L


def loader_generator() -> torch.Generator:
    """A DataLoader's own generator, seeded with :data:`LOADER_SEED`: each iterator of a loader draws its workers'
    base seed from it (decoding draws no random numbers) instead of from torch's global stream, which a run resumed
    mid-epoch would otherwise read once more than the run it continues (that stream feeds random orders and
    dropout later)."""
    return torch.Generator().manual_seed(LOADER_SEED)


def warn_unreadable(name: str, reason: str) -> None:
    """The warning for a file that cannot be decoded (it is left out, or replaced in a train batch)."""
    log.warning("skipping unreadable image %s: %s", name, reason)


class DecodeImages(Dataset):
    """Item ``i`` of ``sources`` (each ``(source, name)``) -> ``(i, uint8 [C, S, S] or None, name, reason)``."""

    def __init__(self, sources: Sequence, image_size: int, channels: int):
        self.sources, self.image_size, self.channels = sources, image_size, channels

    def __len__(self) -> int:
        return len(self.sources)

    def __getitem__(self, i: int):
        source, name = self.sources[i]
        try:
            return i, load_image(source, self.image_size, self.channels), name, None
        except Exception as e:  # PIL raises many types for bad files; any of them means "skip this one"
            return i, None, name, f"{type(e).__name__}: {e}"


def collate(items: list) -> tuple[torch.Tensor, torch.Tensor | None, list[tuple[str, str]]]:
    """-> (indices of the decoded items [b], their images uint8 [b, C, S, S] or None, [(name, reason)] of the rest)."""
    ok = [(i, image) for i, image, _, _ in items if image is not None]
    failed = [(name, reason) for _, image, name, reason in items if image is None]
    indices = torch.tensor([i for i, _ in ok], dtype=torch.long)
    return indices, torch.stack([image for _, image in ok]) if ok else None, failed


def decode_all(sources: Sequence, image_size: int, channels: int, num_workers: int, where: str
               ) -> tuple[torch.Tensor, torch.Tensor, list[str]]:
    """Decode every source with ``num_workers`` DataLoader workers (0: in this process).

    Returns (images uint8 ``[n, C, S, S]``, the positions ``[n]`` in ``sources`` they came from, the names of
    the skipped ones). ``where`` names the data in messages; raises if nothing could be decoded.
    """
    if len(sources) == 0:
        raise ValueError(f"{where} has no images")
    loader = DataLoader(DecodeImages(sources, image_size, channels), batch_size=DECODE_BATCH,
                        num_workers=num_workers, collate_fn=collate, generator=loader_generator())
    images = torch.empty(len(sources), channels, image_size, image_size, dtype=torch.uint8)  # [N, C, S, S]
    decoded = torch.zeros(len(sources), dtype=torch.bool)
    skipped: list[tuple[str, str]] = []
    for indices, batch, failed in tqdm(loader, desc=f"decode {where}", leave=False):
        if batch is not None:
            images[indices], decoded[indices] = batch, True
        for name, reason in failed:
            warn_unreadable(name, reason)
        skipped += failed
    if not decoded.any():
        name, reason = skipped[0]
        raise ValueError(f"no readable image in {where}: all {len(sources)} failed to decode, e.g. {name}: {reason}")
    kept = decoded.nonzero().squeeze(1)
    if skipped:
        log.warning("%s: skipped %d unreadable image(s) of %d", where, len(skipped), len(sources))
        images = images[kept]
    return images, kept, [name for name, _ in skipped]
