"""Checkpoints under attack and under crashes: a crafted DCP ``.metadata`` is refused without running its code; a
save that dies at any step, or on a full disk, leaves a checkpoint whose record and weights agree."""

import builtins
import errno
import os
import pathlib
import pickle
import re
import sys
import traceback
from pathlib import Path

import pytest
import torch
from torch import nn
from torch.distributed.checkpoint.api import CheckpointException

from rlar.run_record import load_schedule
from rlar.runtime import atomic_files, checkpoint
from rlar.runtime.checkpoint import Checkpointer
from rlar.runtime.safe_dcp import UnsafeCheckpoint


def modules_and_optimizer(seed: int):
    torch.manual_seed(seed)
    modules = nn.ModuleDict({"policy": nn.Linear(3, 2), "ema": nn.Linear(3, 2)})
    optimizer = torch.optim.AdamW(modules["policy"].parameters(), lr=1e-2)
    modules["policy"](torch.randn(4, 3)).square().sum().backward()
    optimizer.step()
    return modules, optimizer


def saved(directory, fmt, iteration, seed):
    """A checkpointer of modules drawn from ``seed``, saved at ``iteration``; returns the weights it saved."""
    modules, optimizer = modules_and_optimizer(seed)
    Checkpointer(directory, modules, optimizer, fmt).save({"iteration": iteration})
    return modules["policy"].weight.detach().clone()


def loaded(directory, fmt):
    """``(iteration, policy weight, optimizer step)`` of the checkpoint in ``directory``."""
    modules, optimizer = modules_and_optimizer(99)
    record = Checkpointer(directory, modules, optimizer, fmt).load()
    step = float(next(iter(optimizer.state.values()))["step"])
    return record["iteration"], modules["policy"].weight.detach().clone(), step


class WritesAFile:
    """A pickle payload that, when unpickled, creates a file."""

    def __init__(self, path):
        self.path = str(path)

    def __reduce__(self):
        return (open, (self.path, "w"))


def test_crafted_dcp_metadata_is_refused_and_runs_nothing(tmp_path):
    directory = tmp_path / "checkpoints"
    saved(directory, "sharded", 1, seed=0)
    shards = next(directory.glob("last_sharded.*"))
    marker = tmp_path / "pwned"
    (shards / ".metadata").write_bytes(pickle.dumps(WritesAFile(marker)))
    with pytest.raises(UnsafeCheckpoint, match="io.open"):
        loaded(directory, "sharded")
    assert not marker.exists()


def test_a_sharded_checkpoint_written_under_python_3_13_loads(tmp_path):
    """Python 3.13 pickles the metadata's path as pathlib._local.PosixPath, which was refused as an altered file."""
    saved(tmp_path, "sharded", 3, seed=1)
    metadata = next(tmp_path.glob("last_sharded.*")) / ".metadata"
    content = pickle.loads(metadata.read_bytes())  # the test's own file
    with pytest.MonkeyPatch.context() as patch:  # pickled as 3.13 names the class
        patch.setitem(sys.modules, "pathlib._local", pathlib)
        patch.setattr(pathlib.PosixPath, "__module__", "pathlib._local")
        as_313 = pickle.dumps(content)
    assert b"pathlib._local" in as_313
    metadata.write_bytes(as_313)
    assert loaded(tmp_path, "sharded")[0] == 3


@pytest.mark.parametrize("fmt", ["consolidated", "sharded"])
def test_a_real_checkpoint_loads_exactly(tmp_path, fmt):
    weight = saved(tmp_path, fmt, 3, seed=1)
    iteration, loaded_weight, step = loaded(tmp_path, fmt)
    assert (iteration, step) == (3, 1.0)
    assert torch.equal(loaded_weight, weight)


class Crash(Exception):
    pass


def crash_at(monkeypatch, target, name, when):
    """``target.name`` raises ``Crash`` when ``when(first argument)``, else runs as before."""
    original = getattr(target, name)

    def crash(*args, **kwargs):
        if when(args[0] if name != "save" or target is checkpoint.dcp else args[1]):
            raise Crash(name)
        return original(*args, **kwargs)
    monkeypatch.setattr(target, name, crash)


def always(arg):
    return True


def a_file(arg):
    """A path, or a file on disk open for writing (the record's torch.save writes through one), not DCP's
    in-memory buffers."""
    return isinstance(arg, (str, os.PathLike)) or isinstance(getattr(arg, "name", None), str)


def the_old_shards(arg):
    return os.path.basename(arg) == "last_sharded.1"


CRASH_POINTS = {  # name -> (where and when to crash, the iteration current afterwards)
    "writing shards": ((checkpoint.dcp, "save", always), 1),
    "writing the record": ((atomic_files.torch, "save", a_file), 1),
    "replacing the record": ((atomic_files.os, "replace", always), 1),
    "removing the old shards": ((checkpoint.shutil, "rmtree", the_old_shards), 2),
}


@pytest.mark.parametrize("point", CRASH_POINTS)
def test_a_save_killed_at_any_step_leaves_a_consistent_checkpoint(tmp_path, monkeypatch, point):
    weights = {1: saved(tmp_path, "sharded", 1, seed=1)}
    where, current = CRASH_POINTS[point]
    with monkeypatch.context() as patch:
        crash_at(patch, *where)
        with pytest.raises(Crash):
            weights[2] = saved(tmp_path, "sharded", 2, seed=2)
    if current == 2:
        torch.manual_seed(2)
        weights[2] = modules_and_optimizer(2)[0]["policy"].weight.detach()
    iteration, weight, _ = loaded(tmp_path, "sharded")
    assert iteration == current
    assert torch.equal(weight, weights[current])
    saved(tmp_path, "sharded", 3, seed=3)  # the next save and start leave only what the record names
    assert sorted(p.name for p in tmp_path.iterdir()) == ["last.pt", "last_sharded.3"]


def test_saving_the_same_step_again_never_removes_the_checkpoint_it_replaces(tmp_path, monkeypatch):
    weights = {1: saved(tmp_path, "sharded", 1, seed=1)}  # in last_sharded.1
    with monkeypatch.context() as patch:
        crash_at(patch, checkpoint.dcp, "save", always)  # the same step saved again (a rescue save) dies writing
        with pytest.raises(Crash):
            saved(tmp_path, "sharded", 1, seed=2)
    iteration, weight, _ = loaded(tmp_path, "sharded")
    assert iteration == 1 and torch.equal(weight, weights[1])
    for seed in (3, 4):  # saved again, twice: each save writes beside the folder the record names, then replaces it
        weights[seed] = saved(tmp_path, "sharded", 1, seed=seed)
        assert torch.equal(loaded(tmp_path, "sharded")[1], weights[seed])
    assert sorted(p.name for p in tmp_path.iterdir()) == ["last.pt", "last_sharded.1"]

@pytest.mark.parametrize("fmt", ["consolidated", "sharded"])
def test_a_full_disk_names_the_path_and_keeps_the_previous_checkpoint(tmp_path, monkeypatch, fmt):
    weight = saved(tmp_path, fmt, 1, seed=1)

    def full(obj, f, *args, **kwargs):  # the record's file, or DCP's shards' bytes
        if a_file(f):
            (f if hasattr(f, "write") else open(f, "wb")).write(b"partial")
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(atomic_files.torch, "save", full)
    with pytest.raises(OSError, match=rf"no space left .* {re.escape(str(tmp_path))}: it needs about [0-9,]+ bytes"):
        saved(tmp_path, fmt, 2, seed=2)
    monkeypatch.undo()
    iteration, loaded_weight, _ = loaded(tmp_path, fmt)
    assert iteration == 1 and torch.equal(loaded_weight, weight)
    assert not [p for p in tmp_path.iterdir() if "tmp" in p.name]


def test_a_failed_sharded_save_is_an_error_the_run_handles_with_the_previous_checkpoint_current(tmp_path,
                                                                                                 monkeypatch):
    """DCP raises ``CheckpointException``, a ``BaseException``, which a run's handlers (``except Exception``: the
    save after a failed evaluation) would let by; the save raises it as a ``RuntimeError`` naming the folder."""
    weight = saved(tmp_path, "sharded", 1, seed=1)

    def denied(*args, **kwargs):
        denial = PermissionError(errno.EACCES, "Permission denied")
        raise CheckpointException("save failed", {0: (denial, traceback.extract_stack())})

    monkeypatch.setattr(checkpoint.dcp, "save", denied)
    with pytest.raises(RuntimeError, match=rf"saving the checkpoint in {re.escape(str(tmp_path))} failed \(rank 0: "
                                           "PermissionError.*Permission denied"):
        saved(tmp_path, "sharded", 2, seed=2)
    monkeypatch.undo()
    iteration, loaded_weight, _ = loaded(tmp_path, "sharded")
    assert iteration == 1 and torch.equal(loaded_weight, weight)


class WithAnUnusedParameter(nn.Module):
    """A user's policy with a parameter no loss reads: the optimizer keeps no state for it."""

    def __init__(self):
        super().__init__()
        self.unused = nn.Parameter(torch.zeros(3))
        self.linear = nn.Linear(3, 2)

    def forward(self, x):
        return self.linear(x)


def unused_parameter_run(seed: int):
    torch.manual_seed(seed)
    modules = nn.ModuleDict({"policy": WithAnUnusedParameter()})
    return modules, torch.optim.AdamW(modules.parameters(), lr=1e-2)


def adamw_steps(modules, optimizer, steps: int) -> torch.Tensor:
    """``steps`` updates on a fixed batch; the weights after them."""
    for _ in range(steps):
        optimizer.zero_grad()
        modules["policy"](torch.ones(4, 3)).square().sum().backward()
        optimizer.step()
    return modules["policy"].linear.weight.detach().clone()


@pytest.mark.parametrize("fmt", ["consolidated", "sharded"])
def test_a_parameter_without_optimizer_state_resumes_without_any(tmp_path, fmt):
    """DCP gives a parameter the checkpoint has no state for a step count of 1 (and refuses to load without it); the
    resumed optimizer leaves it without state, as the saving one was, and steps as a run never saved does."""
    straight = adamw_steps(*unused_parameter_run(0), 3)
    modules, optimizer = unused_parameter_run(0)
    adamw_steps(modules, optimizer, 1)
    Checkpointer(tmp_path, modules, optimizer, fmt).save({"iteration": 1})
    resumed_modules, resumed_optimizer = unused_parameter_run(1)
    Checkpointer(tmp_path, resumed_modules, resumed_optimizer, fmt).load()
    assert resumed_modules["policy"].unused not in resumed_optimizer.state
    assert [float(s["step"]) for s in resumed_optimizer.state.values()] == [1.0, 1.0]
    assert torch.equal(adamw_steps(resumed_modules, resumed_optimizer, 2), straight)


def test_orphaned_temporary_files_are_removed_at_start(tmp_path):
    saved(tmp_path, "consolidated", 1, seed=1)
    orphans = [tmp_path / ".last.pt.tmp-12345", tmp_path / "last_sharded.tmp", tmp_path / "last_sharded.7"]
    orphans[0].write_bytes(b"half a file")
    for folder in orphans[1:]:
        folder.mkdir()
    loaded(tmp_path, "consolidated")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["last.pt"]


def fresh_adamw(seed: int):
    """``(modules, optimizer)`` drawn from ``seed``, before the optimizer's first step."""
    torch.manual_seed(seed)
    modules = nn.ModuleDict({"policy": nn.Linear(3, 2)})
    return modules, torch.optim.AdamW(modules["policy"].parameters(), lr=1e-2)


def adam_step(modules, optimizer) -> torch.Tensor:
    """One update on a fixed batch; returns the weights after it."""
    modules["policy"](torch.ones(4, 3)).square().sum().backward()
    optimizer.step()
    return modules["policy"].weight.detach().clone()


@pytest.mark.parametrize("fmt", ["consolidated", "sharded"])
def test_a_save_before_the_first_update_leaves_the_optimizer_fresh(tmp_path, fmt):
    """A stop after the prior's evaluation saves before any update. Asking DCP for the optimizer's state would create
    it by a step at lr 0 (step count 1, zero moments), and every later Adam step would differ from a run never saved;
    instead the optimizer is left out of the record, and both the saving run and the resumed one step as a fresh
    optimizer does. Two saves at the same iteration (a stop after the prior's evaluation, then one in the warm-up)
    write different shard folders: the current one is never overwritten."""
    never_saved = adam_step(*fresh_adamw(0))
    modules, optimizer = fresh_adamw(0)
    checkpointer = Checkpointer(tmp_path, modules, optimizer, fmt)
    checkpointer.save({"iteration": 0, "warmup_done": 0})
    assert not optimizer.state
    resumed_modules, resumed_optimizer = fresh_adamw(1)
    record = Checkpointer(tmp_path, resumed_modules, resumed_optimizer, fmt).load()
    assert record["optimizer_stepped"] is False and not resumed_optimizer.state
    assert torch.equal(adam_step(modules, optimizer), never_saved)
    assert torch.equal(adam_step(resumed_modules, resumed_optimizer), never_saved)
    checkpointer.save({"iteration": 0, "warmup_done": 1})  # after the warm-up's first update: its state is saved
    again_modules, again_optimizer = fresh_adamw(2)
    assert Checkpointer(tmp_path, again_modules, again_optimizer, fmt).load()["optimizer_stepped"] is True
    assert [float(s["step"]) for s in again_optimizer.state.values()] == [1.0, 1.0]
    assert torch.equal(again_modules["policy"].weight, never_saved)
    if fmt == "sharded":
        assert sorted(p.name for p in tmp_path.iterdir()) == ["last.pt", "last_sharded.1"]


def test_a_really_full_disk_is_an_oserror_naming_the_space_needed(tmp_path, monkeypatch):
    weight = saved(tmp_path, "consolidated", 1, seed=1)
    monkeypatch.setattr(atomic_files, "open", lambda path, mode: builtins.open("/dev/full", mode), raising=False)
    with pytest.raises(OSError, match=rf"no space left .* {re.escape(str(tmp_path))}: it needs about [0-9,]+ bytes"):
        saved(tmp_path, "consolidated", 2, seed=2)  # torch.save to a path would raise a RuntimeError here
    monkeypatch.undo()
    iteration, loaded_weight, _ = loaded(tmp_path, "consolidated")
    assert iteration == 1 and torch.equal(loaded_weight, weight)
    assert not [p for p in tmp_path.iterdir() if "tmp" in p.name]


@pytest.mark.parametrize("fmt", ["consolidated", "sharded"])
def test_a_save_removes_the_exports_of_an_older_end_whatever_the_format(tmp_path, fmt):
    """A finished sharded run exported ``policy.pt``/``ema.pt``; extended (here as a consolidated one), its next save
    removes them, or ``rlar-eval``/``rlar-export`` would read the old end's weights as the run's final ones."""
    for name in checkpoint.EXPORTS:
        (tmp_path / name).write_bytes(b"the weights of an older end")
    saved(tmp_path, fmt, 2, seed=0)
    assert not any((tmp_path / name).exists() for name in checkpoint.EXPORTS)


def test_a_resumed_schedule_sets_the_learning_rate_a_save_before_any_update_did_not_keep():
    """Saved after 3 iterations whose updates never stepped (no finite reward): no optimizer state is kept, and the
    resumed optimizer must still train at the schedule's 4th rate, not its first."""
    def schedule():
        optimizer = torch.optim.AdamW(nn.Linear(2, 1).parameters(), lr=1.0)
        return optimizer, torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: (step + 1) / 10)

    optimizer, scheduler = schedule()
    with pytest.warns(UserWarning, match="before `optimizer.step"):  # as the loop's iterations without an update
        for _ in range(3):
            scheduler.step()
    resumed_optimizer, resumed = schedule()
    assert resumed_optimizer.param_groups[0]["lr"] == pytest.approx(0.1)  # the first step's, before loading
    load_schedule(resumed, scheduler.state_dict())
    assert resumed_optimizer.param_groups[0]["lr"] == pytest.approx(optimizer.param_groups[0]["lr"]) == 0.4


def test_a_file_is_on_the_disk_before_its_rename_and_the_rename_before_the_writer_goes_on(tmp_path, monkeypatch):
    """A power loss after an unsynced rename can leave an empty ``last.pt`` (XFS, ext4 without auto_da_alloc), and the
    older shard folders are removed right after it: the new file's content is synced before the rename, the folder's
    entry after it."""
    events = []
    real_fsync, real_replace = os.fsync, os.replace
    monkeypatch.setattr(atomic_files.os, "fsync", lambda fd: events.append(("fsync", os.readlink(
        f"/proc/self/fd/{fd}"))) or real_fsync(fd))
    monkeypatch.setattr(atomic_files.os, "replace", lambda src, dst: events.append(("replace", str(dst))) or
                        real_replace(src, dst))
    atomic_files.atomic_torch_save({"iteration": 3}, tmp_path / "last.pt")
    (tmp_name,) = [path for kind, path in events[:1] if kind == "fsync"]
    assert Path(tmp_name).name.startswith(".last.pt.tmp-")  # the temporary file's content, first
    assert events[1:] == [("replace", str(tmp_path / "last.pt")), ("fsync", str(tmp_path))]
    assert torch.load(tmp_path / "last.pt", weights_only=True) == {"iteration": 3}


def test_a_file_a_library_creates_private_gets_the_mode_open_gives(tmp_path):
    """safetensors creates its file 0o600: an exported folder's weights were unreadable to the others who were meant
    to load it, beside a config.json they could read."""
    with atomic_files.atomic_path(tmp_path / "model.safetensors") as tmp:
        os.close(os.open(tmp, os.O_CREAT | os.O_WRONLY, 0o600))
    atomic_files.atomic_write_text(tmp_path / "config.json", "{}")
    modes = {name: (tmp_path / name).stat().st_mode & 0o777 for name in ("model.safetensors", "config.json")}
    mask = os.umask(0)
    os.umask(mask)
    assert modes == {"model.safetensors": 0o666 & ~mask, "config.json": 0o666 & ~mask}


def test_a_file_system_without_modes_keeps_its_own_and_the_write_succeeds(tmp_path, monkeypatch):
    """vfat refuses chmod (EPERM): the mode is cosmetic, and the file is written all the same."""
    def refused(path, mode):
        raise PermissionError(1, "Operation not permitted", str(path))

    monkeypatch.setattr(atomic_files.os, "chmod", refused)
    atomic_files.atomic_write_text(tmp_path / "summary.json", "{}")
    assert (tmp_path / "summary.json").read_text() == "{}"
