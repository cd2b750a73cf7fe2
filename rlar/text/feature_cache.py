"""Caption features computed once: kept in memory (least recently used first out) and optionally on disk, one
``safetensors`` file per caption named by a hash of the caption and of the model that encoded it."""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from collections import OrderedDict
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file


class FeatureCache:
    """``get(caption)`` / ``put(caption, features [l, E])``. ``model``: what identifies the encoder and its settings
    (part of every disk key); ``folder``: the disk cache (None: memory only); ``capacity``: captions in memory."""

    def __init__(self, model: dict, folder: str | None, capacity: int):
        if capacity < 1:
            raise ValueError(f"text_encoder.memory_cache_size must be >= 1, got {capacity}")
        self.model = json.dumps(model, sort_keys=True)
        self.folder = None if folder is None else Path(folder).expanduser()
        self.capacity = capacity
        self.memory: OrderedDict[str, torch.Tensor] = OrderedDict()

    def path(self, caption: str) -> Path:
        key = hashlib.sha1(json.dumps([self.model, caption]).encode()).hexdigest()
        return self.folder / f"{key}.safetensors"

    def get(self, caption: str) -> torch.Tensor | None:
        if caption in self.memory:
            self.memory.move_to_end(caption)
            return self.memory[caption]
        if self.folder is not None and self.path(caption).is_file():
            features = load_file(self.path(caption))["features"]
            self._remember(caption, features)
            return features
        return None

    def put(self, caption: str, features: torch.Tensor) -> None:
        features = features.detach().cpu().contiguous()
        self._remember(caption, features)
        if self.folder is not None:
            self.folder.mkdir(parents=True, exist_ok=True)
            fd, tmp = tempfile.mkstemp(dir=self.folder, suffix=".tmp")
            os.close(fd)
            save_file({"features": features}, tmp, metadata={"caption": caption})
            os.replace(tmp, self.path(caption))

    def _remember(self, caption: str, features: torch.Tensor) -> None:
        self.memory[caption] = features
        self.memory.move_to_end(caption)
        while len(self.memory) > self.capacity:
            self.memory.popitem(last=False)
