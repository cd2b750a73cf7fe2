"""A cache build that a stop signal pauses: the training loop stops at the end of its current step with its state
saved beside the cache entry (``<entry>.partial.pt``), and the next build of that entry resumes there, bit for bit.

A loop names its state as a dict of the objects it trains with (modules, optimizers and lr schedules by their
``state_dict``, ``torch.Generator`` by its state, tensors and lists in place); the global random state is always kept.
"""

from __future__ import annotations

import copy
import logging
import pickle
from pathlib import Path

import torch

from rlar.runtime.atomic_files import atomic_torch_save
from rlar.runtime.stop_signals import Stopped, StopRequest

log = logging.getLogger(__name__)


class BuildCheckpoint:
    """The pause point of one cache build's loop; without a ``path`` (a build outside the cache) it does nothing."""

    def __init__(self, path: Path | None = None, what: str = "", stop: StopRequest | None = None):
        self.path, self.what, self.stop = path, what, stop

    def resume(self, state: dict, progress=None) -> int:
        """The step to start from: 0, or the steps a stopped build had done, its saved state loaded into ``state``
        (and ``progress`` advanced). A saved state that does not fit is logged and the build starts over."""
        if self.path is None or not self.path.is_file():
            return 0
        before = copy.deepcopy({key: state_of(value) for key, value in state.items()})  # state_dicts share tensors
        try:
            saved = torch.load(self.path, map_location="cpu", weights_only=True)
            for key, value in state.items():
                load_into(value, saved["state"][key])
            torch.set_rng_state(saved["torch_rng"])
        except (KeyError, RuntimeError, ValueError, EOFError, pickle.UnpicklingError) as e:
            for key, value in state.items():  # as it was: a state loaded halfway is not a start
                load_into(value, before[key])
            log.warning("%s: cannot resume from %s (%s: %s); building it from the start", self.what, self.path,
                        type(e).__name__, e)
            return 0
        log.info("%s: resuming the build at step %d (%s)", self.what, saved["step"], self.path)
        if progress is not None:
            progress.update(saved["step"])
        return saved["step"]

    def step_done(self, steps_done: int, total: int, state: dict) -> None:
        """After each step: when a stop signal has come, save ``state`` and raise ``Stopped`` (not after the last
        step: the build then finishes, and the caller stops once the entry is written)."""
        if self.stop is None or self.stop.received is None or steps_done == total:
            return
        snapshot = {"step": steps_done, "state": {k: state_of(v) for k, v in state.items()},
                    "torch_rng": torch.get_rng_state()}
        atomic_torch_save(snapshot, self.path)
        raise Stopped(f"stopped by {self.stop.received} while building {self.what}, after step {steps_done} of "
                      f"{total}: saved in {self.path}; run the same command to resume the build")

    def finished(self) -> None:
        """The entry is written: a saved state of an earlier stop is no longer needed."""
        if self.path is not None:
            self.path.unlink(missing_ok=True)


def state_of(value):
    """What is saved of one object of a loop's state."""
    if isinstance(value, torch.Generator):
        return value.get_state()
    if hasattr(value, "state_dict"):
        return value.state_dict()
    if isinstance(value, torch.Tensor):
        return value.clone()
    return list(value)


def load_into(value, saved) -> None:
    """Load ``saved`` (from :func:`state_of`) into the object ``value`` in place."""
    if isinstance(value, torch.Generator):
        value.set_state(saved)
    elif hasattr(value, "load_state_dict"):
        value.load_state_dict(saved)
    elif isinstance(value, torch.Tensor):
        value.copy_(saved)
    else:
        value[:] = saved
