"""A folder of class sub-folders of images (``root/<class>/**/<image>``); sorted class names are the class ids."""

from __future__ import annotations

import hashlib
import os
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import torch

from rlar.data.decode import PREPROCESSING
from rlar.data.stored import Split, StoredImageData, subset_rows

CAPTIONS = (None, "sidecar")  # data.captions
EXTENSIONS = {".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp", ".tif", ".tiff", ".ppm", ".pgm"}


def class_folders(root: Path, key: str) -> list[str]:
    """The sorted names of the class sub-folders of ``root`` (hidden ones left out)."""
    if not root.is_dir():
        raise FileNotFoundError(f"data.{key}='{root}' is not a directory; give a folder with one sub-folder of "
                                "images per class (root/<class>/<image>)")
    classes = sorted(d.name for d in root.iterdir() if d.is_dir() and not d.name.startswith("."))
    if not classes:
        raise ValueError(f"data.{key}='{root}' has no class sub-folders; expected root/<class>/<image> (for one "
                         "class, put the images in a single sub-folder)")
    return classes


def check_apart(root: Path, eval_root: Path) -> None:
    """Refuse held-out images that are train images: ``eval_root`` the same folder as ``root``, or one inside the
    other."""
    a, b = root.resolve(), eval_root.resolve()
    if a == b or a in b.parents or b in a.parents:
        raise ValueError(f"data.eval_root='{eval_root}' and data.root='{root}' share images (the same folder, or one "
                         "inside the other): the held-out split would hold images the policy trains on; give a "
                         "folder apart, or eval_root=null to hold out data.eval_fraction of root")


def files_under(folder: Path) -> Iterator[Path]:
    """Every file under ``folder``, at any depth, from the folders' entries: no ``stat`` per regular file (one per
    symbolic link). Hidden files and folders (``.ipynb_checkpoints``: copies of the images) are left out, links to
    folders are not followed, and a folder that cannot be read is passed over."""
    try:
        with os.scandir(folder) as entries:
            for entry in entries:
                if entry.name.startswith("."):
                    continue
                if entry.is_dir(follow_symlinks=False):
                    yield from files_under(Path(entry.path))
                elif entry.is_file():
                    yield Path(entry.path)
    except PermissionError:
        return


def image_files(root: Path, classes: list[str], class_ids: dict[str, int]) -> tuple[list[Path], list[int]]:
    """Every image file (by extension, any depth, sorted) under ``root/<class>`` and its class id. A class folder
    without images is refused (it would take a class id, and a share of every balanced evaluation, with nothing to
    learn it from), unless no folder has any (the caller's error)."""
    files, labels, empty = [], [], []
    for name in classes:
        found = sorted(p for p in files_under(root / name) if p.suffix.lower() in EXTENSIONS)
        files += found
        labels += [class_ids[name]] * len(found)
        if not found:
            empty.append(name)
    if empty and files:
        raise ValueError(f"the class folders {empty} under '{root}' hold no image files "
                         f"({', '.join(sorted(EXTENSIONS))}); remove them, or add their images")
    return files, labels


class FileSources:
    """Item ``i`` -> ``(root / relative[i], its name)``; the relative paths are one bytes array (``[n]``), not a
    Python object per file for every DataLoader worker to copy."""

    def __init__(self, root: Path, files: list[Path]):
        self.root = root
        self.relative = np.array([os.fsencode(f.relative_to(root)) for f in files], dtype=np.bytes_)

    def __len__(self) -> int:
        return len(self.relative)

    def __getitem__(self, i: int) -> tuple[Path, str]:
        path = self.root / os.fsdecode(self.relative[i])
        return path, str(path)


class SidecarCaptions:
    """Item ``i`` of ``files`` -> the text of its sidecar, the ``.txt`` file of the same name beside the image
    (surrounding whitespace stripped), read on access."""

    def __init__(self, files: FileSources):
        self.files = files

    def __len__(self) -> int:
        return len(self.files)

    def __getitem__(self, i: int) -> str:
        path, _ = self.files[int(i)]
        return read_caption(path.with_suffix(".txt"))


def read_caption(path: Path) -> str:
    """The UTF-8 text of the caption file ``path``, surrounding whitespace (and a byte-order mark) stripped; else an
    error naming it."""
    try:
        return path.read_text(encoding="utf-8-sig").strip()  # a byte-order mark (Notepad's UTF-8) left out
    except UnicodeDecodeError as e:
        raise ValueError(f"data.captions=sidecar: caption file '{path}' is not UTF-8 text ({e.reason} at byte "
                         f"{e.start}); re-save it as UTF-8") from None


def file_stamp(path: Path) -> tuple[int, int]:
    """``(size in bytes, modification time in ns)`` of a file; ``(-1, -1)`` when it is gone."""
    try:
        stat = path.stat()
    except OSError:
        return -1, -1
    return stat.st_size, stat.st_mtime_ns


def listing_digest(listed: list[tuple[FileSources, torch.Tensor]]) -> str:
    """A hash of each listed file's path relative to its root, class id (``labels [n]`` of each ``FileSources``), size
    in bytes and modification time: a file moved to another class, added, removed, renamed, replaced or rewritten in
    place changes it, and the same files under another root (moved, or copied with their times) do not; no file is
    read."""
    digest = hashlib.sha1()
    for k, (files, labels) in enumerate(listed):
        for relative, label in zip(files.relative.tolist(), labels.tolist(), strict=True):
            size, modified = file_stamp(files.root / os.fsdecode(relative))
            digest.update(b"%d\0%s\0%d\0%d\0%d\n" % (k, relative, label, size, modified))
    return digest.hexdigest()[:16]


def check_sidecars(files: list[Path], root: Path) -> None:
    """Every image of ``files`` has its ``.txt`` sidecar; else an error naming how many lack one, and the first."""
    missing = [f for f in files if not f.with_suffix(".txt").is_file()]
    if missing:
        raise FileNotFoundError(f"data.captions=sidecar: {len(missing)} of the {len(files)} images under '{root}' "
                                f"have no caption file beside them, e.g. '{missing[0].with_suffix('.txt')}'; write "
                                "one .txt per image (its caption), or set data.captions=null")


class ImageFolderData(StoredImageData):
    """Images of ``root/<class>/...`` center-cropped to ``image_size``; class ids follow the sorted folder names.
    The files are listed at construction and decoded on access (see :class:`StoredImageData`).

    Evaluation uses ``eval_root`` (the same layout, class names among root's) when given, else a held-out
    ``eval_fraction`` of root. ``num_classes`` (default: the number of class folders) sizes the class table.
    ``captions="sidecar"``: each image's caption is the ``.txt`` file of the same name beside it (all must exist).
    """

    def __init__(self, root: str, image_size: int = 256, channels: int = 3, eval_root: str | None = None,
                 eval_fraction: float = 0.1, split_seed: int = 0, max_images: int | None = None,
                 num_workers: int = 0, num_classes: int | None = None, captions: str | None = None):
        super().__init__(image_size, channels, num_workers)
        if captions not in CAPTIONS:
            raise ValueError(f"data.captions={captions!r} is not available; choose one of {CAPTIONS} (null: none)")
        self.captions = captions
        self.root = Path(root).expanduser().absolute()
        self.eval_root = Path(eval_root).expanduser().absolute() if eval_root else None
        self.eval_fraction, self.split_seed, self.max_images = eval_fraction, split_seed, max_images
        self.listed: list[tuple[FileSources, torch.Tensor]] = []  # each folder's files and labels [n], as read
        self._files_digest: str | None = None
        self.classes = class_folders(self.root, "root")
        class_ids = {name: i for i, name in enumerate(self.classes)}
        train = self._read(self.root, self.classes, class_ids)
        held_out = None
        if self.eval_root is not None:
            check_apart(self.root, self.eval_root)
            eval_classes = class_folders(self.eval_root, "eval_root")
            unknown = sorted(set(eval_classes) - set(self.classes))
            if unknown:
                raise ValueError(f"data.eval_root='{self.eval_root}' has classes {unknown} that data.root="
                                 f"'{self.root}' lacks; the class ids come from root's sub-folders")
            held_out = self._read(self.eval_root, eval_classes, class_ids)
        classes = len(self.classes) if num_classes is None else num_classes
        self.store(train, held_out, eval_fraction, split_seed, classes, f"data.root='{self.root}'")

    def _read(self, root: Path, classes: list[str], class_ids: dict[str, int]) -> Split:
        """Index the (possibly ``max_images``-subsampled) files: their sources, labels ``[N]`` and captions (or
        None); nothing is decoded or read here."""
        files, labels = image_files(root, classes, class_ids)
        if not files:
            raise ValueError(f"no image files ({', '.join(sorted(EXTENSIONS))}) under the class sub-folders of "
                             f"'{root}'")
        rows = subset_rows(len(files), self.max_images, self.split_seed)
        files = [files[i] for i in rows.tolist()]
        sources, labels = FileSources(root, files), torch.tensor(labels)[rows]
        self.listed.append((sources, labels))
        if self.captions == "sidecar":
            check_sidecars(files, root)
        return sources, labels, SidecarCaptions(sources) if self.captions else None

    def fingerprint(self) -> dict:
        """The settings, counts and ``files``: :func:`listing_digest` of the files read (hashed on the first call)."""
        if self._files_digest is None:
            self._files_digest = listing_digest(self.listed)
        return {"name": "image_folder", "root": str(self.root), "eval_root": str(self.eval_root or ""),
                "image_size": self.image_size, "preprocessing": PREPROCESSING, "channels": self.channels,
                "eval_fraction": self.eval_fraction,
                "split_seed": self.split_seed, "max_images": self.max_images, "num_classes": self.num_classes,
                "num_train": len(self.train_labels), "num_eval": len(self.eval_labels), "files": self._files_digest}
