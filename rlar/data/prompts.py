"""Prompts without images: a text file of one prompt per line, for rewards that need no target image."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import torch

from rlar.data.batches import ImageData, holdout_split
from rlar.data.stored import subset_rows


def read_prompts(path: str, key: str) -> list[str]:
    """The non-blank lines of the UTF-8 text file ``path`` (``data.<key>``; a byte-order mark left out), stripped;
    lines end at a newline alone (not at the other characters ``str.splitlines`` breaks at)."""
    file = Path(path).expanduser()
    if not file.is_file():
        raise FileNotFoundError(f"data.{key}='{path}' is not a file; give a UTF-8 text file of one prompt per line")
    try:
        text = file.read_text(encoding="utf-8-sig")
    except UnicodeDecodeError as e:
        raise ValueError(f"data.{key}='{path}' is not UTF-8 text ({e.reason} at byte {e.start}); re-save it as "
                         "UTF-8") from None
    prompts = [line.strip() for line in text.split("\n") if line.strip()]
    if not prompts:
        raise ValueError(f"data.{key}='{path}' holds no prompt (every line is blank); write one prompt per line")
    return prompts


class PromptData(ImageData):
    """The prompts of ``path`` as the train split (the eval split: ``eval_path``'s, or a held-out ``eval_fraction``
    fixed by ``split_seed``); ``max_prompts`` keeps a fixed random subset of each. No images: ``train_images`` and
    ``eval_images`` are None and batches hold None in their place, so the policy samples from the prompts alone
    and rewards get no targets. Every item's class label is the null class (-1); ``num_classes`` sizes the policy's
    class table (the embedded prior's 10 by default), ``image_size`` and ``channels`` are those the tokenizer makes.
    """

    train_images = None
    eval_images = None

    def __init__(self, path: str, eval_path: str | None = None, eval_fraction: float = 0.1, split_seed: int = 0,
                 max_prompts: int | None = None, num_classes: int = 10, image_size: int = 32, channels: int = 1):
        self.path, self.eval_path = path, eval_path
        self.eval_fraction, self.split_seed, self.max_prompts = eval_fraction, split_seed, max_prompts
        self.num_classes, self.image_size, self.channels = num_classes, image_size, channels
        prompts = read_prompts(path, "path")
        if eval_path is None:
            train_idx, eval_idx = holdout_split(len(prompts), eval_fraction, split_seed)
            if len(train_idx) == 0 or len(eval_idx) == 0:
                raise ValueError(f"data.eval_fraction={eval_fraction} of the {len(prompts)} prompts of data.path="
                                 f"'{path}' leaves an empty split; give more prompts, data.eval_path, or another "
                                 "eval_fraction")
            train, held_out = [prompts[i] for i in train_idx.tolist()], [prompts[i] for i in eval_idx.tolist()]
        else:
            if Path(eval_path).expanduser().resolve() == Path(path).expanduser().resolve():
                raise ValueError(f"data.eval_path='{eval_path}' is data.path: the held-out prompts would be the "
                                 "train prompts; give another file, or eval_path=null to hold out "
                                 "data.eval_fraction of them")
            train, held_out = prompts, read_prompts(eval_path, "eval_path")
        self.train_captions, self.eval_captions = self._subset(train), self._subset(held_out)
        self.train_labels = torch.full((len(self.train_captions),), -1, dtype=torch.long)
        self.eval_labels = torch.full((len(self.eval_captions),), -1, dtype=torch.long)

    def _subset(self, prompts: list[str]) -> list[str]:
        rows = subset_rows(len(prompts), self.max_prompts, self.split_seed, "data.max_prompts")
        return [prompts[i] for i in rows.tolist()]

    def train_batches(self, index_batches: list[torch.Tensor]) -> Iterator[None]:
        """No images: None for each index batch."""
        return (None for _ in index_batches)

    def fingerprint(self) -> dict:
        return {"name": "prompts", "path": str(Path(self.path).expanduser().absolute()),
                "eval_path": self.eval_path, "eval_fraction": self.eval_fraction, "split_seed": self.split_seed,
                "max_prompts": self.max_prompts, "num_train": len(self.train_captions),
                "num_eval": len(self.eval_captions)}
