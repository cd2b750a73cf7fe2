"""Sample sets as arrays: uint8 ``[N, H, W, 3]`` images, ADM-style ``.npz`` files (key ``arr_0``; a reference batch's
FID statistics ``mu`` and ``sigma``), image folders and a PNG grid."""

from __future__ import annotations

import os
import zipfile
from collections.abc import Iterable
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torchvision.utils import make_grid

from rlar.data.batches import ImageData, random_rows
from rlar.data.decode import DECODE_BATCH, to_8bit
from rlar.runtime.atomic_files import atomic_write

SUBSET_SEED = 0  # the fixed random subset of a split that split_uint8 reads for max_images
IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp", ".tif", ".tiff", ".ppm", ".pgm"}


def to_uint8_hwc(images: torch.Tensor) -> np.ndarray:
    """``images [N, C, H, W]`` in [-1, 1] (C = 1 or 3) as uint8 ``[N, H, W, 3]``; grayscale repeated to 3 channels."""
    if images.dim() != 4 or images.shape[1] not in (1, 3):
        raise ValueError(f"expected images [N, 1 or 3, H, W], got shape {tuple(images.shape)}")
    pixels = ((images.detach().float().cpu().clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8)  # [N, C, H, W]
    return pixels.expand(-1, 3, -1, -1).permute(0, 2, 3, 1).contiguous().numpy()


def stacked_uint8(batches: Iterable[torch.Tensor], count: int, image_size: int | None = None) -> np.ndarray:
    """uint8 ``[count, H, W, 3]`` of the image batches ``[b, C, H, W]`` in [-1, 1] of ``batches`` (``count`` images
    in all), each converted as it comes into one array: no float copy of the whole set, no second uint8 copy. With
    ``image_size``, each batch is first resized to ``image_size`` x ``image_size`` (:func:`resized`)."""
    out, start = None, 0
    for batch in batches:
        pixels = to_uint8_hwc(batch if image_size is None else resized(batch, image_size))  # [b, H, W, 3]
        if out is None:
            out = np.empty((count, *pixels.shape[1:]), np.uint8)
        out[start : start + len(pixels)] = pixels
        start += len(pixels)
    if out is None or start != count:
        raise ValueError(f"expected {count} images, got {start}")
    return out


def resized(images: torch.Tensor, image_size: int) -> torch.Tensor:
    """``images [N, C, H, W]`` in [-1, 1] resized to ``[N, C, image_size, image_size]`` as LlamaGen's sampling scripts
    resize to their ``image_size_eval`` (bicubic, no antialiasing; e.g. a 384-px model's samples to ADM's 256-px
    references), clamped to [-1, 1]."""
    if images.shape[-2:] == (image_size, image_size):
        return images
    return F.interpolate(images.float(), size=(image_size, image_size), mode="bicubic").clamp(-1, 1)


def split_uint8(data: ImageData, split: str, max_images: int | None = None,
                image_size: int | None = None) -> np.ndarray:
    """uint8 ``[N, H, W, 3]`` of ``data``'s ``split`` (``train`` or ``eval``): all of it, or where it has more than
    ``max_images`` images the fixed random subset of them (``SUBSET_SEED``) (in split order), converted a
    chunk at a time (the train split decoded only as far as asked), resized to ``image_size`` where given."""
    size = len(data.train_labels if split == "train" else data.eval_labels)
    positions = random_rows(size, max_images, SUBSET_SEED)  # [N]
    whole = len(positions) == size  # consecutive positions: eval chunks read as slices (views)
    index_batches = list(positions.split(DECODE_BATCH))
    batches = (data.train_batches(index_batches) if split == "train"
               else (data.eval_images_of(slice(int(p[0]), int(p[-1]) + 1) if whole else p) for p in index_batches))
    return stacked_uint8(batches, len(positions), image_size)


def write_npz(path: str | os.PathLike, images: np.ndarray) -> Path:
    """Write ``images`` uint8 ``[N, H, W, 3]`` as ``arr_0`` of an uncompressed ``.npz`` (the layout ADM's evaluator
    reads)."""
    check_layout(images, str(path))
    path = Path(path)
    path = path if path.suffix == ".npz" else path.with_name(f"{path.name}.npz")  # as np.savez names it
    return atomic_write(path, lambda file: np.savez(file, arr_0=images))  # whole, or the old file


def check_layout(images: np.ndarray, what: str) -> None:
    check_image_layout(images.dtype, images.shape, what)


def check_image_layout(dtype: np.dtype, shape: tuple[int, ...], what: str) -> None:
    """Images of ``dtype`` and ``shape`` are uint8 ``[N, H, W, 3]``; else an error naming ``what``."""
    if dtype != np.uint8 or len(shape) != 4 or shape[-1] != 3:
        raise ValueError(f"{what}: expected uint8 images [N, H, W, 3], got {dtype} {tuple(shape)}")


def npz_layout(path: Path) -> dict[str, tuple[tuple[int, ...], np.dtype]]:
    """``{name: (shape, dtype)}`` of each array of the ``.npz`` at ``path``, from the arrays' headers: no array is
    read (an ADM reference batch's ``arr_0`` is 2 GB)."""
    layout = {}
    with zipfile.ZipFile(path) as archive:
        for member in archive.namelist():
            if member.endswith(".npy"):
                with archive.open(member) as f:
                    major, _ = np.lib.format.read_magic(f)
                    header = np.lib.format.read_array_header_1_0 if major == 1 else np.lib.format.read_array_header_2_0
                    shape, _, dtype = header(f)
                layout[member.removesuffix(".npy")] = (shape, dtype)
    return layout


def check_npz_reference(path: str | os.PathLike, width: int) -> int:
    """The image count of the reference ``.npz`` at ``path``, after the checks :func:`read_images` and
    :func:`read_fit` make of it, from its headers alone (:func:`npz_layout`)."""
    path = Path(path).expanduser()
    try:
        layout = npz_layout(path)
    except (zipfile.BadZipFile, ValueError) as e:
        raise ValueError(f"{path}: not an .npz of arrays ({e})") from None
    check_samples_key(path, list(layout))
    shape, dtype = layout["arr_0"]
    check_image_layout(dtype, shape, str(path))
    check_fit_keys(path, list(layout))
    if "mu" in layout:
        check_fit_shapes(path, layout["mu"][0], layout["sigma"][0], width)
    return shape[0]


def open_npz(path: Path):
    """``np.load`` of the ``.npz`` at ``path`` (no pickles); a file that is not a whole one (a download cut short)
    raises ``ValueError``, as a bad array does."""
    try:
        return np.load(path, allow_pickle=False)
    except zipfile.BadZipFile as e:
        raise ValueError(f"{path}: not an .npz of arrays ({e})") from None


def read_images(path: str | os.PathLike) -> np.ndarray:
    """uint8 ``[N, H, W, 3]`` from an ``.npz`` (its ``arr_0``) or from every image under a folder (sorted, any depth,
    converted to RGB, 16-bit grayscale scaled to 8 bits; all of one size)."""
    path = Path(path).expanduser()
    if path.is_dir():
        return read_folder(path)
    if not path.is_file():
        raise FileNotFoundError(f"reference '{path}' does not exist; give an .npz (arr_0: uint8 [N, H, W, 3]) or a "
                                "folder of images (rlar-eval --make-reference writes one of a data split)")
    with open_npz(path) as archive:
        check_samples_key(path, list(archive.keys()))
        images = archive["arr_0"]
    check_layout(images, str(path))
    return images


def read_fit(path: str | os.PathLike, width: int) -> tuple[torch.Tensor, torch.Tensor] | None:
    """The FID statistics an ADM reference batch ``.npz`` carries besides ``arr_0``: ``(mu [F], sigma [F, F])`` in
    float64 (a Gaussian fit of the Inception pool features of a whole training set), which ADM's evaluator's FID
    compares with instead of the fit of ``arr_0``'s features; None for a folder or an ``.npz`` without them. F must
    be ``width``, the features' (``rlar.eval.inception.POOL_WIDTH``)."""
    path = Path(path).expanduser()
    if path.is_dir():
        return None
    with open_npz(path) as archive:
        check_fit_keys(path, list(archive.keys()))
        if "mu" not in archive:
            return None
        mu, sigma = archive["mu"], archive["sigma"]
    check_fit_shapes(path, mu.shape, sigma.shape, width)
    return torch.from_numpy(mu).double(), torch.from_numpy(sigma).double()


def check_samples_key(path: Path, keys: list[str]) -> None:
    """An ``.npz`` of ``keys`` holds its images as ``arr_0`` (ADM's layout)."""
    if "arr_0" not in keys:
        raise ValueError(f"{path}: no 'arr_0' array (found {keys}); the samples must be arr_0")


def check_fit_keys(path: Path, keys: list[str]) -> None:
    """An ``.npz`` of ``keys`` has both ``mu`` and ``sigma`` (an ADM reference batch's fit) or neither."""
    if ("mu" in keys) != ("sigma" in keys):
        raise ValueError(f"{path}: an ADM reference batch has both 'mu' and 'sigma' (found {keys})")


def check_fit_shapes(path: Path, mu: tuple[int, ...], sigma: tuple[int, ...], width: int) -> None:
    """``mu [F]`` and ``sigma [F, F]`` (their shapes) fit the ``width`` Inception pool features."""
    if len(mu) != 1 or tuple(sigma) != (mu[0], mu[0]):
        raise ValueError(f"{path}: expected mu [F] and sigma [F, F], got {tuple(mu)} and {tuple(sigma)}")
    if mu[0] != width:
        raise ValueError(f"{path}: mu {tuple(mu)} and sigma {tuple(sigma)} fit {mu[0]} features, but FID compares "
                         f"the Inception pool features, [{width}] and [{width}, {width}]; give a reference batch of "
                         "those (ADM's), or an .npz without mu and sigma (FID then fits its images' features)")


def read_folder(root: Path) -> np.ndarray:
    files = sorted(p for p in root.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file())
    if not files:
        raise ValueError(f"no images under '{root}' (suffixes {sorted(IMAGE_SUFFIXES)})")
    images = []
    for file in files:
        with Image.open(file) as image:
            images.append(np.asarray(to_8bit(image).convert("RGB")))  # [H, W, 3]
    sizes = {image.shape for image in images}
    if len(sizes) > 1:
        raise ValueError(f"the images under '{root}' have {len(sizes)} sizes ({sorted(sizes)[:3]} ...); resize and "
                         "crop them to one size first")
    return np.stack(images)


def write_grid(path: str | os.PathLike, images: np.ndarray, max_images: int = 64) -> Path:
    """A PNG grid of the first ``max_images`` of ``images`` uint8 ``[N, H, W, 3]``, about square."""
    shown = torch.from_numpy(images[:max_images]).permute(0, 3, 1, 2)  # [n, 3, H, W]
    grid = make_grid(shown, nrow=max(1, round(len(shown) ** 0.5)), padding=2, pad_value=255)  # [3, H', W']
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(grid.permute(1, 2, 0).numpy()).save(path)
    return path
