"""Checkpoints that resume on any number of processes, through ``torch.distributed.checkpoint``'s state-dict API.

``checkpoints/last.pt`` (written by rank 0, last, so it is the commit point) holds the loop's state; with
``train.checkpoint_format=consolidated`` it also holds the full policy (``policy``: a plain state dict, loadable
as ``policy.checkpoint``), critic, the policy's average (``ema``, the same kind of state dict) and optimizer;
with ``sharded``, those live in DCP shards under ``checkpoints/last_sharded/``, written by every rank in parallel
and resharded on load.
"""

from __future__ import annotations

import contextlib
import shutil
import warnings
from pathlib import Path

import torch
import torch.distributed.checkpoint as dcp
from torch import nn
from torch.distributed.checkpoint.state_dict import (
    StateDictOptions,
    get_model_state_dict,
    get_state_dict,
    set_state_dict,
)

from rlar.runtime import distributed
from rlar.runtime.cache import atomic_torch_save

FORMATS = ("consolidated", "sharded")
FULL = StateDictOptions(full_state_dict=True, cpu_offload=True)


@contextlib.contextmanager
def quiet_single_process():
    """DCP warns that it assumes a single process when there is no process group: that is the intent here."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="torch.distributed is disabled")
        yield


def split_state(state: dict, names) -> dict:
    """``{"policy.w": ...}`` -> ``{"policy": {"w": ...}, ...}`` for each of ``names``."""
    return {name: {k[len(name) + 1:]: v for k, v in state.items() if k.startswith(name + ".")} for name in names}


def join_state(parts: dict) -> dict:
    return {f"{name}.{k}": v for name, part in parts.items() for k, v in part.items()}


class Checkpointer:
    """Saves and restores ``modules`` (an ``nn.ModuleDict``: policy, critic, the policy's average ``ema``) with
    their optimizer."""

    def __init__(self, directory: str | Path, modules: nn.ModuleDict, optimizer, fmt: str = "consolidated"):
        if fmt not in FORMATS:
            raise ValueError(f"train.checkpoint_format must be one of {FORMATS}, got {fmt!r}")
        self.directory, self.modules, self.optimizer, self.format = Path(directory), modules, optimizer, fmt
        self.record_path = self.directory / "last.pt"
        self.shards = self.directory / "last_sharded"

    def save(self, loop_state: dict) -> None:
        """Collective: every rank calls it."""
        record = {**loop_state, "format": self.format}
        if self.format == "sharded":
            model, optim = get_state_dict(self.modules, self.optimizer)
            tmp = self.shards.with_name(self.shards.name + ".tmp")
            if distributed.is_main():
                shutil.rmtree(tmp, ignore_errors=True)
            distributed.barrier()
            with quiet_single_process():
                dcp.save({"model": model, "optim": optim}, checkpoint_id=tmp)
            distributed.barrier()
            if distributed.is_main():
                shutil.rmtree(self.shards, ignore_errors=True)
                tmp.rename(self.shards)
        else:
            model, optim = get_state_dict(self.modules, self.optimizer, options=FULL)
            record.update(split_state(model, self.modules.keys()), optimizer=optim)
        if distributed.is_main():
            atomic_torch_save(record, self.record_path)
        distributed.barrier()

    def load(self) -> dict | None:
        """Restore modules and optimizer from the last checkpoint, if any; returns its loop state."""
        if not self.record_path.is_file():
            return None
        record = torch.load(self.record_path, map_location="cpu", weights_only=True)
        if "format" not in record:
            raise RuntimeError(f"{self.record_path} was written by an older rlar; remove it or run with resume=false")
        if record["format"] == "sharded":
            model, optim = get_state_dict(self.modules, self.optimizer)
            state = {"model": model, "optim": optim}
            with quiet_single_process():
                dcp.load(state, checkpoint_id=self.shards)
            set_state_dict(self.modules, self.optimizer, model_state_dict=state["model"],
                           optim_state_dict=state["optim"])
        else:
            parts = {name: record[name] for name in self.modules.keys()}
            set_state_dict(self.modules, self.optimizer, model_state_dict=join_state(parts),
                           optim_state_dict=record["optimizer"], options=StateDictOptions(full_state_dict=True))
        return record

    def export_policy(self, path: str | Path, name: str = "policy") -> None:
        """Collective: the full module ``name`` (the policy, or its average ``ema``) as a plain state dict at
        ``path`` (rank 0 writes)."""
        model = get_model_state_dict(self.modules, options=FULL)
        if distributed.is_main():
            atomic_torch_save(split_state(model, [name])[name], path)
        distributed.barrier()
