"""Structured-config schemas of the data options (registered as ``schema/data/<name>``)."""

from __future__ import annotations

from dataclasses import dataclass

from omegaconf import MISSING


@dataclass
class DigitsDataSchema:
    _target_: str = "rlar.data.digits.DigitsData"
    image_size: int = 32
    eval_fraction: float = 0.2  # fixed held-out split for evaluation
    split_seed: int = 0
    # null = no captions; attributes = each digit's class and measured thickness and slant ("a thick seven leaning
    # right", rlar/data/captions.py), for text conditioning and reward=compositional
    captions: str | None = None


@dataclass
class HFDiskSchema:
    _target_: str = "rlar.data.hf_disk.HFDiskData"
    path: str = MISSING  # the save_to_disk directory (required: data.path=...)
    # shorter side resized to this, then center-cropped; the embedded tokenizer needs a multiple of 4
    image_size: int = 256
    channels: int = 3  # 3 = RGB, 1 = grayscale
    split: str = "train"
    # null: `validation`, else `test`, else hold out eval_fraction of train; or a split name, or holdout
    eval_split: str | None = None
    eval_fraction: float = 0.1  # held-out part of train when there is no eval split
    split_seed: int = 0  # fixes the held-out part and the max_images subset
    max_images: int | None = None  # read at most this many images of each split (a fixed random subset); null = all
    num_workers: int = 0  # DataLoader workers decoding the batches and the eval split (0 = in the main process)
    image_column: str | None = None  # null = the first of image, image_path, file, filepath
    label_column: str | None = None  # null = label, else labels
    # null = a ClassLabel's class count, else the number of distinct labels (must be 0..K-1)
    num_classes: int | None = None
    caption_column: str | None = None  # a text column of captions (prompts), read on access; null = no captions


@dataclass
class ImageFolderSchema:
    _target_: str = "rlar.data.image_folder.ImageFolderData"
    root: str = MISSING  # the folder of class sub-folders (required: data.root=...)
    # shorter side resized to this, then center-cropped; the embedded tokenizer needs a multiple of 4
    image_size: int = 256
    channels: int = 3  # 3 = RGB, 1 = grayscale
    eval_root: str | None = None  # a second folder of the same classes for evaluation; null = hold out eval_fraction
    eval_fraction: float = 0.1
    split_seed: int = 0  # fixes the held-out part and the max_images subset
    max_images: int | None = None  # read at most this many images of each folder (a fixed random subset); null = all
    num_workers: int = 0  # DataLoader workers decoding the batches and the eval split (0 = in the main process)
    # the class count the policy embeds: null = the number of class folders; more keeps a released model's class
    # table (ImageNet's 1,000); the ids still follow the sorted folder names
    num_classes: int | None = None
    captions: str | None = None  # null = none; sidecar = each image's caption is the .txt of the same name beside it


@dataclass
class PromptsSchema:
    _target_: str = "rlar.data.prompts.PromptData"
    path: str = MISSING  # a UTF-8 text file, one prompt per line (required: data.path=...); blank lines skipped
    eval_path: str | None = None  # the eval prompts, one per line; null = hold out eval_fraction of path's
    eval_fraction: float = 0.1
    split_seed: int = 0  # fixes the held-out part and the max_prompts subset
    max_prompts: int | None = None  # keep at most this many prompts of each split (a fixed random subset); null = all
    # every item's class label is the null class (-1); the class table the policy was built with (10: the embedded
    # prior's; 1000 for an ImageNet model)
    num_classes: int = 10
    image_size: int = 32  # the images the tokenizer makes (there are no data images)
    channels: int = 1


DATA_SCHEMAS = {"digits": DigitsDataSchema, "hf_disk": HFDiskSchema, "image_folder": ImageFolderSchema,
                "prompts": PromptsSchema}
