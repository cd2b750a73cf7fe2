"""Structured-config schemas of the file-backed data options (registered as ``schema/data/<name>``)."""

from __future__ import annotations

from dataclasses import dataclass

from omegaconf import MISSING


@dataclass
class HFDiskSchema:
    _target_: str = "rlar.data.hf_disk.HFDiskData"
    path: str = MISSING
    image_size: int = 256
    channels: int = 3
    split: str = "train"
    eval_split: str | None = None
    eval_fraction: float = 0.1
    split_seed: int = 0
    max_images: int | None = None
    num_workers: int = 0
    image_column: str | None = None
    label_column: str | None = None
    num_classes: int | None = None


@dataclass
class ImageFolderSchema:
    _target_: str = "rlar.data.image_folder.ImageFolderData"
    root: str = MISSING
    image_size: int = 256
    channels: int = 3
    eval_root: str | None = None
    eval_fraction: float = 0.1
    split_seed: int = 0
    max_images: int | None = None
    num_workers: int = 0


DATA_SCHEMAS = {"hf_disk": HFDiskSchema, "image_folder": ImageFolderSchema}
