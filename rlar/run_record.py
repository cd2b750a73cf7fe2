"""What a checkpoint keeps of a run and how the loop writes and reads it: the scheduled save, the resume, and the
saves that keep a run whose step failed (``rlar.loop``)."""

from __future__ import annotations

import contextlib
import copy
import logging

from rlar.build import Run
from rlar.runtime import distributed
from rlar.runtime.random_streams import gather_rng, restore_rng

log = logging.getLogger(__name__)


def save(run: Run, iteration: int, summary: dict, warmed: int) -> None:
    """The checkpoint of ``iteration`` after ``warmed`` warm-up steps: weights, their average and the optimizer
    (``run.checkpointer``), the algorithm's and the reward's state, the lr schedule, the summary so far and every
    rank's random streams."""
    run.checkpointer.save({"algorithm": run.algorithm.state_dict(), "reward": run.reward.state_dict(),
                           "scheduler": run.scheduler.state_dict(), "iteration": iteration, "warmup_done": warmed,
                           "summary": summary, "rng": gather_rng(run.generators)})


def resume(run: Run) -> tuple[int, int, dict]:
    """``(iteration, warm-up steps done, summary)`` of the last checkpoint, with the algorithm's and the reward's
    state, the lr schedule and the random streams restored; ``(0, 0, {})`` when there is none."""
    state = run.checkpointer.load()
    if state is None:
        return 0, 0, {}
    if state["iteration"] > run.cfg.train.iterations:
        raise ValueError(f"train.iterations={run.cfg.train.iterations} is lower than the {state['iteration']} "
                         f"iterations of the checkpoint {run.checkpointer.record_path}: set train.iterations >= "
                         f"{state['iteration']}, or resume=false (or another name) to start over")
    run.algorithm.load_state_dict(state["algorithm"])
    run.reward.load_state_dict(state.get("reward", {}))  # written before rewards kept state: none
    if "scheduler" in state:
        load_schedule(run.scheduler, state["scheduler"])
    else:  # written before rlar had schedules: its lr was the optimizer's, the constant schedule's at any step
        log.warning("%s has no lr schedule: the schedule starts at its first step", run.checkpointer.record_path)
    restore_rng(run.generators, state["rng"], state["iteration"], run.hw.seed)
    # a record written before a warm-up could be stopped was saved after the whole warm-up
    warmed = state.get("warmup_done", run.cfg.train.warmup_steps)
    log.info("resumed from %s at iteration %d, after %d of %d warm-up steps", run.checkpointer.record_path,
             state["iteration"], warmed, run.cfg.train.warmup_steps)
    return state["iteration"], warmed, state["summary"]


def load_schedule(scheduler, state: dict) -> None:
    """The lr schedule as ``state`` saved it, and the optimizer's learning rates where it had moved them: a checkpoint
    saved before the first update keeps no optimizer state, whose rates would stay at the schedule's first step."""
    scheduler.load_state_dict(state)
    for group, lr in zip(scheduler.optimizer.param_groups, scheduler.get_last_lr(), strict=True):
        group["lr"] = lr


@contextlib.contextmanager
def saved_if_it_fails(run: Run, summary: dict, done: int, saved_at: int | None, warmed: int | None = None):
    """A block that changes nothing a checkpoint keeps until its first optimizer step but the random streams, the
    algorithm's and a learning reward's state (an iteration up to its update's first step; with ``warmed``, warm-up
    step ``warmed + 1``). On one process, an error in it before that step first saves the run exactly as it was after
    iteration ``done`` (and ``warmed`` warm-up steps): those as they were when the block began, the rest as it is. Not
    when ``done`` is the last checkpoint (``saved_at``), nor under torchrun (a save is collective, and the error may
    be one rank's alone), nor once an optimizer step has begun: the weights may be half stepped."""
    if distributed.world_size() > 1 or done == saved_at:
        yield
        return
    streams = gather_rng(run.generators)  # as save() keeps them
    algorithm_state, reward_state = copy.deepcopy(run.algorithm.state_dict()), copy.deepcopy(run.reward.state_dict())
    stepped = []
    hook = run.optimizer.register_step_pre_hook(lambda *_: stepped.append(True))
    try:
        yield
    except Exception:
        what = (f"iteration {done + 1} failed" if warmed is None else
                f"warm-up step {warmed + 1} of {run.cfg.train.warmup_steps} failed")
        if stepped:
            log.error("%s after an optimizer step had begun (the weights may be half stepped): nothing is saved, and "
                      "the last checkpoint stands", what)
            raise
        restore_rng(run.generators, streams, done, run.hw.seed)
        run.algorithm.load_state_dict(algorithm_state)
        run.reward.load_state_dict(reward_state)
        rescue_save(run, summary, done, f"{what} before its first optimizer step", warmed=warmed)
        raise
    finally:
        hook.remove()


def rescue_save(run: Run, summary: dict, done: int, what: str, pending: int | None = None,
                error: Exception | None = None, warmed: int | None = None) -> None:
    """Before ``error`` (what ``what`` raised) goes on: save the run as it is after iteration ``done`` (``pending``: the
    iteration whose evaluation did not run; ``warmed``: the warm-up steps done, for a failure within the warm-up),
    so the same command resumes there. On one process, or under torchrun when every rank raises it here
    (``RaisedOnEveryRank``: a save is collective; else the last checkpoint stands). A failure of the save itself is
    logged, and the last checkpoint stands."""
    if distributed.world_size() > 1 and not isinstance(error, distributed.RaisedOnEveryRank):
        return
    if pending is not None:
        summary["pending_evaluation"] = pending
    steps = run.cfg.train.warmup_steps if warmed is None else warmed
    where = f"iteration {done}" if warmed is None else f"{warmed} of {run.cfg.train.warmup_steps} warm-up steps"
    try:
        save(run, done, summary, steps)
    except Exception:
        log.exception("%s, and so did saving the run after %s: the last checkpoint stands", what, where)
        return
    log.error("%s; the run is saved as it was after %s in %s, and the same command resumes there%s", what, where,
              run.checkpointer.record_path, " and evaluates it first" if pending is not None else "")
