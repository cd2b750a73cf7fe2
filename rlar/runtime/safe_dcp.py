"""Reading ``torch.distributed.checkpoint`` shards without running code from the run directory.

DCP's ``FileSystemReader`` unpickles ``.metadata`` with plain ``pickle`` and its ``DefaultLoadPlanner`` loads
non-tensor items with ``weights_only=False``: a crafted file would execute code on resume. Here the metadata goes
through an unpickler that only builds DCP's own metadata classes, torch sizes, dtypes, layouts and paths, and the
non-tensor items through ``torch.load(weights_only=True)``.
"""

from __future__ import annotations

import io
import pathlib
import pickle

import torch
from torch.distributed.checkpoint import DefaultLoadPlanner, FileSystemReader
from torch.distributed.checkpoint._traverse import set_element
from torch.distributed.checkpoint.metadata import Metadata, StorageMeta
from torch.distributed.checkpoint.planner import ReadItem

METADATA_CLASSES = {
    ("torch.distributed.checkpoint.metadata", name)
    for name in ("Metadata", "MetadataIndex", "StorageMeta", "TensorProperties", "TensorStorageMetadata",
                 "BytesStorageMetadata", "ChunkStorageMetadata", "_MEM_FORMAT_ENCODING")
} | {("torch.distributed.checkpoint.filesystem", "_StorageInfo"), ("torch", "Size"),
     ("torch.serialization", "_get_layout")}
# a checkpoint's path, which Python 3.13 pickles from pathlib._local: read as pathlib's own class on any version
PATH_CLASSES = {(module, name) for module in ("pathlib", "pathlib._local") for name in ("PosixPath", "PurePosixPath")}


class UnsafeCheckpoint(RuntimeError):
    """A checkpoint file asks to build something that a checkpoint never holds."""


class MetadataUnpickler(pickle.Unpickler):
    """Builds only the classes of ``METADATA_CLASSES`` and ``PATH_CLASSES``, and torch dtypes; refuses the rest."""

    def find_class(self, module: str, name: str):
        if (module, name) in METADATA_CLASSES:
            return super().find_class(module, name)
        if (module, name) in PATH_CLASSES:
            return getattr(pathlib, name)
        if module == "torch" and isinstance(getattr(torch, name, None), torch.dtype):
            return getattr(torch, name)
        raise UnsafeCheckpoint(f"refusing to load {module}.{name} from a checkpoint's DCP metadata: a checkpoint "
                               "written by rlar never holds it; the file was altered, remove it or run with "
                               "resume=false")


class SafeReader(FileSystemReader):
    """``FileSystemReader`` whose ``.metadata`` is read by ``MetadataUnpickler``."""

    def read_metadata(self, *args, **kwargs) -> Metadata:
        path = self._get_metadata_path(kwargs.get("rank"))
        with self.fs.create_stream(path, "rb") as stream:
            metadata = MetadataUnpickler(stream).load()
        if not isinstance(metadata, Metadata):
            raise UnsafeCheckpoint(f"{path} holds a {type(metadata).__name__}, not DCP metadata")
        if getattr(metadata, "storage_meta", None) is None:
            metadata.storage_meta = StorageMeta()
        metadata.storage_meta.load_id = self.load_id
        return metadata


class SafePlanner(DefaultLoadPlanner):
    """``DefaultLoadPlanner`` that loads non-tensor items (the optimizer's step counts, lr) with
    ``weights_only=True``."""

    def load_bytes(self, read_item: ReadItem, value: io.BytesIO) -> None:
        loaded = torch.load(value, weights_only=True)
        if self.flatten_state_dict:
            set_element(self.original_state_dict, self.mappings[read_item.dest_index.fqn], loaded)
        else:
            self.state_dict[read_item.dest_index.fqn] = loaded
