"""Real signals to real runs: SIGTERM saves and exits, SIGKILL (between saves or inside one) loses nothing a re-run
cannot recompute exactly, and a re-run with another computation is refused."""

import json
import os
import random
import signal
import subprocess
import sys
import time

import pytest
import torch

pytestmark = pytest.mark.slow  # every test here trains through the CLI

ITERATIONS = 4
# the CLI, with os.replace slowed down on the save of iteration 2's record: a kill then lands inside that save
SLOW_SECOND_SAVE = """
import os, sys, time
import rlar.runtime.atomic_files as atomic_files
real, saves = os.replace, []
def slow_replace(src, dst):
    if str(dst).endswith("last.pt"):
        saves.append(dst)
        if len(saves) == 2:
            time.sleep(120)
    return real(src, dst)
atomic_files.os = type(sys)("slow_os")
atomic_files.os.__dict__.update(os.__dict__, replace=slow_replace)
from rlar.run import cli
sys.argv[0] = "rlar-run"
cli()
"""
# the CLI, sending itself SIGTERM at the moment SIGNAL_AT names: as the progress bar of that name is drawn (the
# earliest moment a stop must be caught in that phase), or "evaluation": as the first evaluation (the prior's) begins
SIGTERM_AT = """
import os, signal, sys
import rlar.loop as loop
at = os.environ["SIGNAL_AT"]
def signalling(real, fires):
    def call(*args, **kwargs):
        if fires(kwargs):
            os.kill(os.getpid(), signal.SIGTERM)
        return real(*args, **kwargs)
    return call
if at == "evaluation":
    loop.evaluation = signalling(loop.evaluation, lambda kwargs: True)
else:
    loop.tqdm = signalling(loop.tqdm, lambda kwargs: kwargs.get("desc") == at)
from rlar.run import cli
sys.argv[0] = "rlar-run"
cli()
"""


def command(tiny, out, *extra, script=None, iterations=ITERATIONS):
    head = [sys.executable, "-c", script] if script else [sys.executable, "-m", "rlar.run"]
    tiny = [o for o in tiny if not o.startswith(("train.iterations=", "train.checkpoint_every="))]
    every = [] if any(o.startswith("train.checkpoint_every=") for o in extra) else ["train.checkpoint_every=1"]
    return [*head, *tiny, *every, f"train.iterations={iterations}", "hardware.num_threads=1", f"hydra.run.dir={out}",
            *extra]


def wait_for(condition, proc, seconds=600):
    deadline = time.monotonic() + seconds
    while not condition():
        assert proc.poll() is None, proc.communicate()
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.05)


def record_of(out) -> dict:
    return torch.load(out / "checkpoints" / "last.pt", weights_only=True)


def recorded_iteration(out) -> int:
    return record_of(out)["iteration"] if (out / "checkpoints" / "last.pt").is_file() else 0


def finished(cmd):
    proc = subprocess.run(cmd, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc


def outcome(out):
    """What a finished run computed: its last checkpoint (weights, average, optimizer, schedule, algorithm state,
    random streams) and its summary, less the timings and the directory."""
    record = torch.load(out / "checkpoints" / "last.pt", weights_only=True)
    summary = json.loads((out / "summary.json").read_text())
    return record, {k: v for k, v in summary.items() if k not in ("timings", "output_dir")}


def assert_identical(a, b, where="record"):
    if isinstance(a, torch.Tensor):
        assert isinstance(b, torch.Tensor) and a.dtype == b.dtype and torch.equal(a, b), where
    elif isinstance(a, dict):
        assert a.keys() == b.keys(), where
        for k in a:
            assert_identical(a[k], b[k], f"{where}.{k}")
    elif isinstance(a, (list, tuple)):
        assert len(a) == len(b), where
        for i, (x, y) in enumerate(zip(a, b, strict=True)):
            assert_identical(x, y, f"{where}[{i}]")
    else:
        assert a == b or (a != a and b != b), f"{where}: {a} != {b}"


@pytest.fixture(scope="module")
def uninterrupted(tiny, tmp_path_factory):
    # first fill the cache: a run that trains the tokenizer and prior leaves torch's global random state elsewhere
    # than one that loads them, and every run compared here loads them
    finished(command(tiny, tmp_path_factory.mktemp("fills_the_cache"), iterations=1))
    out = tmp_path_factory.mktemp("uninterrupted")
    finished(command(tiny, out, "train.ema_decay=0.9"))
    return outcome(out)


def test_sigkill_at_a_random_iteration_then_rerun_is_bit_identical(tiny, tmp_path, uninterrupted):
    kill_after = random.Random().randint(1, ITERATIONS - 1)
    cmd = command(tiny, tmp_path, "train.ema_decay=0.9")
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    wait_for(lambda: recorded_iteration(tmp_path) >= kill_after, proc)
    proc.send_signal(signal.SIGKILL)
    proc.wait(60)
    assert recorded_iteration(tmp_path) < ITERATIONS, "the kill came after the run finished"
    finished(cmd)
    assert_identical(outcome(tmp_path), uninterrupted, f"killed after iteration {kill_after}")


def test_sigkill_inside_a_save_then_rerun_is_bit_identical(tiny, tmp_path, uninterrupted):
    proc = subprocess.Popen(command(tiny, tmp_path, "train.ema_decay=0.9", script=SLOW_SECOND_SAVE),
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    wait_for(lambda: any((tmp_path / "checkpoints").glob(".last.pt.tmp-*")) and recorded_iteration(tmp_path) == 1,
             proc)
    proc.send_signal(signal.SIGKILL)  # the new record is written, not yet renamed: iteration 1 stays current
    proc.wait(60)
    assert recorded_iteration(tmp_path) == 1
    finished(command(tiny, tmp_path, "train.ema_decay=0.9"))
    assert not any((tmp_path / "checkpoints").glob(".last.pt.tmp-*"))
    assert_identical(outcome(tmp_path), uninterrupted, "killed inside the save of iteration 2")


def test_sigterm_saves_at_the_end_of_the_iteration_and_the_same_command_resumes(tiny, tmp_path, uninterrupted):
    cmd = command(tiny, tmp_path, "train.ema_decay=0.9", "train.checkpoint_every=100")
    log = tmp_path / "stderr.txt"
    with open(log, "w") as stderr:
        proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=stderr)
        wait_for(lambda: "RL:" in log.read_text(), proc)  # the iterations began
        proc.send_signal(signal.SIGTERM)
        proc.wait(600)
    err = log.read_text()
    assert proc.returncode == 1, err[-3000:]
    stopped_at = recorded_iteration(tmp_path)
    assert f"stopped by SIGTERM after iteration {stopped_at}" in err and "run the same command to resume" in err
    assert 1 <= stopped_at < ITERATIONS  # saved although checkpoint_every=100
    finished(cmd)
    record, summary = outcome(tmp_path)
    assert_identical(record["policy"], uninterrupted[0]["policy"], "policy")
    assert_identical(record["ema"], uninterrupted[0]["ema"], "ema")


def signalled_at(moment: str, cmd: list[str]) -> subprocess.CompletedProcess:
    """``cmd`` (a ``command``) through ``SIGTERM_AT``, signalled at ``moment``: it must stop with status 1."""
    proc = subprocess.run([sys.executable, "-c", SIGTERM_AT, *cmd[3:]], capture_output=True, text=True,
                          env={**os.environ, "SIGNAL_AT": moment})
    assert proc.returncode == 1, proc.stderr[-3000:]
    return proc


def test_sigterm_as_the_progress_bar_appears_stops_after_the_first_iteration(tiny, tmp_path, uninterrupted):
    cmd = command(tiny, tmp_path, "train.ema_decay=0.9", "train.checkpoint_every=100")
    proc = signalled_at("RL", cmd)
    assert "stopped by SIGTERM after iteration 1" in proc.stderr and recorded_iteration(tmp_path) == 1
    finished(cmd)
    record, summary = outcome(tmp_path)
    assert_identical(record["policy"], uninterrupted[0]["policy"], "policy")
    assert_identical(record["ema"], uninterrupted[0]["ema"], "ema")


def test_sigterm_in_the_prior_evaluation_and_in_the_warm_up_loses_nothing(tiny, tmp_path, uninterrupted):
    """A signal during the prior's evaluation stops after it, one during the warm-up after the warm-up step; each
    stop saves what was computed, the same command goes on from there without recomputing it, and the run ends
    bit-identical to one never stopped. (``uninterrupted`` filled the cache: both runs here load the models.)"""
    warm = ("train.warmup_steps=3", "train.ema_decay=0.9")
    whole = tmp_path / "whole"
    finished(command(tiny, whole, *warm))
    cmd = command(tiny, tmp_path / "stopped", *warm)
    stopped = tmp_path / "stopped"
    proc = signalled_at("evaluation", cmd)
    assert "stopped by SIGTERM after the prior's evaluation" in proc.stderr
    record = record_of(stopped)
    assert (record["iteration"], record["warmup_done"]) == (0, 0)
    assert [h["iteration"] for h in record["summary"]["history"]] == [0] and "warmup_ce" not in record["summary"]
    proc = signalled_at("supervised warm-up", cmd)
    assert "stopped by SIGTERM after warm-up step 1 of 3" in proc.stderr
    # the prior's evaluation was read back, not run again (the run's log, appended to by every start, has it once)
    assert (stopped / "run.log").read_text().count("[rlar.loop][INFO] - prior:") == 1
    record = record_of(stopped)
    assert (record["iteration"], record["warmup_done"]) == (0, 1) and "warmup_ce" in record["summary"]
    finished(cmd)
    assert_identical(outcome(stopped), outcome(whole), "stopped in the prior's evaluation and in the warm-up")


def test_a_rerun_with_another_computation_is_refused_and_keeps_the_record(tiny, tmp_path):
    finished(command(tiny, tmp_path, iterations=2))
    recorded = (tmp_path / ".hydra" / "config.yaml").read_text()
    proc = subprocess.run(command(tiny, tmp_path, "optimizer.lr=0.5", iterations=2), capture_output=True, text=True)
    assert proc.returncode == 1
    assert "optimizer.lr differ" in proc.stderr and "resume=false" in proc.stderr
    assert (tmp_path / ".hydra" / "config.yaml").read_text() == recorded
    lower = subprocess.run(command(tiny, tmp_path, iterations=1), capture_output=True, text=True)
    assert lower.returncode != 0 and "lower than the 2 iterations" in lower.stderr
