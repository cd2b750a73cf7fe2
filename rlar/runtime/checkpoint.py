"""Checkpoints that resume on any number of processes, through ``torch.distributed.checkpoint``'s state-dict API.

``checkpoints/last.pt`` (written by rank 0, last, so it is the commit point) holds the loop's state; with
``train.checkpoint_format=consolidated`` it also holds the full policy (``policy``: a plain state dict, loadable as
``policy.checkpoint``), critic, the policy's average (``ema``, the same kind of state dict) and optimizer; with
``sharded``, those live in DCP shards under ``checkpoints/last_sharded.<step>/`` (the loop's steps so far: warm-up
steps plus iterations, so every save writes a new folder), written by every rank in parallel and resharded on load;
``last.pt`` names that folder, so the shards and the record become current together, and older folders are removed
after. A crash at any point leaves the previous or the new checkpoint current, never a mix; what a killed save left
behind is removed at the next start or save. Shards are read through ``rlar.runtime.safe_dcp``: nothing in a run
directory is unpickled.
"""

from __future__ import annotations

import contextlib
import dataclasses
import errno
import re
import shutil
import warnings
from pathlib import Path

import torch
import torch.distributed.checkpoint as dcp
from torch import nn
from torch.distributed.checkpoint.api import CheckpointException
from torch.distributed.checkpoint.state_dict import (
    StateDictOptions,
    get_model_state_dict,
    get_state_dict,
    set_model_state_dict,
    set_optimizer_state_dict,
)

from rlar.runtime import distributed
from rlar.runtime.atomic_files import atomic_torch_save
from rlar.runtime.safe_dcp import SafePlanner, SafeReader

FORMATS = ("consolidated", "sharded")
FULL = StateDictOptions(full_state_dict=True, cpu_offload=True)
EXPORTS = ("policy.pt", "ema.pt")  # a sharded run's plain state dicts, written when it finishes (export_policy)
# the folders a record may name: last_sharded (older rlar), .<step>, .<step>.1 (the same step saved again)
SHARDS = re.compile(r"last_sharded(\.\d+){0,2}")


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

    def save(self, loop_state: dict) -> None:
        """Collective: every rank calls it. A full disk raises ``OSError`` naming the path and the space needed,
        with the previous checkpoint still current; any other failure of DCP's (a ``BaseException``) is raised as a
        ``RuntimeError``."""
        # before the first update (a stop after the prior's evaluation) the optimizer has no state, and none is saved:
        # DCP would create it by a step at lr 0, which shifts Adam's bias correction in every later step
        stepped = bool(self.optimizer.state)
        record = {**loop_state, "format": self.format, "optimizer_stepped": stepped}
        try:
            if self.format == "sharded":
                record["shards"] = self.save_shards(loop_state["iteration"] + loop_state.get("warmup_done", 0),
                                                    stepped)
            else:
                model, optim = self.state_dicts(stepped, FULL)
                record.update(split_state(model, self.modules.keys()), optimizer=optim)
            if distributed.is_main():
                # before the record, whatever the format (a sharded run extended as a consolidated one too): an
                # export never stands beside a newer record; policy.pt first, as it marks the export whole
                for name in EXPORTS:
                    (self.directory / name).unlink(missing_ok=True)
                atomic_torch_save(record, self.record_path)
        except (OSError, CheckpointException) as e:
            if not disk_full(e):
                if isinstance(e, CheckpointException):  # a BaseException: a run's handlers (except Exception) miss it
                    failures = "; ".join(f"rank {rank}: {failure!r}" for rank, (failure, _) in e.failures.items())
                    raise RuntimeError(f"saving the checkpoint in {self.directory} failed ({failures}); the previous "
                                       "checkpoint is still current") from e
                raise
            if distributed.is_main():
                self.remove_leftovers(self.current_shards())
            needed = state_bytes([self.modules.state_dict(), self.optimizer.state_dict()])
            raise OSError(errno.ENOSPC, f"no space left on the device to save the checkpoint in {self.directory}: "
                          f"it needs about {needed:,} bytes ({needed / 2**20:.1f} MiB); the previous checkpoint is "
                          "still current; free space and rerun the same command to resume from it") from e
        distributed.barrier()
        if distributed.is_main():
            self.remove_leftovers(record.get("shards"))
        distributed.barrier()

    def save_shards(self, step: int, stepped: bool) -> str:
        """Every rank writes its DCP shards (the optimizer's only once ``stepped``) to ``last_sharded.<step>/``, or to
        ``last_sharded.<step>.1/`` where the record names the first already (the same step saved again: the folder of
        the current checkpoint is never removed before the new record replaces it); returns that folder's name."""
        current = distributed.broadcast_object(self.current_shards() if distributed.is_main() else None)
        name = f"last_sharded.{step}"
        if name == current:
            name += ".1"
        model, optim = self.state_dicts(stepped)
        if distributed.is_main():
            shutil.rmtree(self.directory / name, ignore_errors=True)  # an earlier save of it, never recorded
        distributed.barrier()
        with quiet_single_process():
            dcp.save({"model": model, **({"optim": optim} if stepped else {})}, checkpoint_id=self.directory / name)
        distributed.barrier()
        return name

    def current_shards(self) -> str | None:
        """The shard folder ``last.pt`` names (``None``: no record, or a consolidated one)."""
        return shards_of(torch.load(self.record_path, map_location="cpu", weights_only=True)
                         if self.record_path.is_file() else None)

    def remove_leftovers(self, current: str | None) -> None:
        """Rank 0: what killed or failed saves left: temporary record files, and shard folders other than
        ``current`` (the one the record names)."""
        if not self.directory.is_dir():
            return
        for path in self.directory.iterdir():
            if path.name.startswith(f".{self.record_path.name}.tmp-"):
                path.unlink(missing_ok=True)
            elif path.is_dir() and path.name != current and (SHARDS.fullmatch(path.name)
                                                             or path.name == "last_sharded.tmp"):
                shutil.rmtree(path, ignore_errors=True)

    def load(self) -> dict | None:
        """Restore modules and optimizer from the last checkpoint, if any; returns its loop state."""
        record = torch.load(self.record_path, map_location="cpu", weights_only=True) if self.record_path.is_file() \
            else None
        if distributed.is_main():
            self.remove_leftovers(shards_of(record))
        distributed.barrier()
        if record is None:
            return None
        if "format" not in record:
            raise RuntimeError(f"{self.record_path} was written by an older rlar; remove it or run with resume=false")
        stepped = record.get("optimizer_stepped", True)  # older records were all saved after an update
        if record["format"] == "sharded":
            shards = shards_of(record)
            if not SHARDS.fullmatch(shards):
                raise RuntimeError(f"{self.record_path} names shards {shards!r}, not a folder rlar writes")
            model, optim = self.state_dicts(stepped)
            reader = SafeReader(self.directory / shards)
            saved = reader.read_metadata().state_dict_metadata  # refuses a crafted file here, with its own error
            if optim is not None:  # the parameters the checkpoint has no optimizer state for read none
                optim["state"] = {fqn: state for fqn, state in optim["state"].items()
                                  if any(key.startswith(f"optim.state.{fqn}.") for key in saved)}
            state = {"model": model, **({"optim": optim} if stepped else {})}
            with quiet_single_process():
                dcp.load(state, storage_reader=reader, planner=SafePlanner())
            self.restore(state["model"], state.get("optim"))
        else:
            parts = {name: record[name] for name in self.modules.keys()}
            self.restore(join_state(parts), record["optimizer"], StateDictOptions(full_state_dict=True))
        return record

    def state_dicts(self, with_optimizer: bool, options: StateDictOptions | None = None) -> tuple[dict, dict | None]:
        """``(model state, optimizer state)``, the latter ``None`` unless ``with_optimizer`` (asking DCP for the
        optimizer's state creates it where there is none)."""
        if with_optimizer:
            return get_state_dict(self.modules, self.optimizer, options=options)
        return get_model_state_dict(self.modules, options=options), None

    def restore(self, model: dict, optim: dict | None, options: StateDictOptions | None = None) -> None:
        """Load ``model`` into the modules and ``optim`` (``None``: a record saved before the first update, which
        leaves the optimizer fresh) into the optimizer. A parameter ``optim`` holds no state for (it had no gradient
        before the save: a user's module with an unused parameter) is left without state, as it was when saved."""
        if optim is not None:  # first: DCP gives every parameter state by a step at lr 0, which moves the average
            set_optimizer_state_dict(self.modules, self.optimizer, optim,
                                     options=dataclasses.replace(options or StateDictOptions(), strict=False))
            for fqn, param in self.modules.named_parameters():
                if fqn not in optim["state"]:
                    self.optimizer.state.pop(param, None)
        set_model_state_dict(self.modules, model, options=options)

    def export_policy(self, path: str | Path, name: str = "policy") -> None:
        """Collective: the full module ``name`` (the policy, or its average ``ema``) as a plain state dict at
        ``path`` (rank 0 writes)."""
        model = get_model_state_dict(self.modules, options=FULL)
        if distributed.is_main():
            atomic_torch_save(split_state(model, [name])[name], path)
        distributed.barrier()


def shards_of(record: dict | None) -> str | None:
    """The shard folder a record names: ``last_sharded.<step>`` (older rlar: ``last_sharded``); ``None`` for
    no record or a consolidated one."""
    return record.get("shards", "last_sharded") if record and record.get("format") == "sharded" else None


def disk_full(error: BaseException) -> bool:
    """Whether ``error`` (or, from DCP, any rank's failure inside it) is a full disk."""
    if isinstance(error, OSError):
        return error.errno == errno.ENOSPC
    return any(disk_full(failure) for failure, _ in getattr(error, "failures", {}).values())


def state_bytes(state) -> int:
    """The bytes of the tensors in a nested state (what a save writes, roughly)."""
    if isinstance(state, torch.Tensor):
        return state.numel() * state.element_size()
    if isinstance(state, dict):
        return sum(state_bytes(v) for v in state.values())
    if isinstance(state, (list, tuple)):
        return sum(state_bytes(v) for v in state)
    return 0
