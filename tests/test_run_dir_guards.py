"""Guards of a run directory: one command at a time (a lock), stop signals noted rather than fatal, and a re-run
refused when its config differs from the recorded one."""

import os
import re
import signal
from pathlib import Path

import pytest
from omegaconf import OmegaConf

from rlar.config import rerun
from rlar.config.rerun import RECORD, check_rerun, differing_keys
from rlar.config.validate import ConfigError
from rlar.runtime.run_lock import RunDirLocked, run_lock
from rlar.runtime.stop_signals import StopRequest

FREE = ["train.iterations", "hardware", "eval.every", "logger"]


def test_a_second_lock_on_the_same_run_dir_is_refused_until_the_first_is_released(tmp_path):
    with run_lock(tmp_path):
        with pytest.raises(RunDirLocked, match=f"already training in {tmp_path}"):
            with run_lock(tmp_path):
                pass
    with run_lock(tmp_path):  # released at exit
        pass


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_a_stop_signal_is_noted_and_the_previous_handler_restored(sig):
    before = signal.getsignal(sig)
    with StopRequest().listening() as stop:
        os.kill(os.getpid(), sig)
        for _ in range(100):  # the handler runs between bytecodes of this thread
            if stop.received:
                break
        assert stop.received == sig.name
    assert signal.getsignal(sig) is before


def write_run(out, cfg: dict, checkpoint=True):
    """A run dir as Hydra and a save leave it: ``.hydra/config.yaml`` and ``checkpoints/last.pt``."""
    (out / ".hydra").mkdir(parents=True, exist_ok=True)
    OmegaConf.save(OmegaConf.create(cfg), out / ".hydra" / "config.yaml")
    if checkpoint:
        (out / "checkpoints").mkdir(exist_ok=True)
        (out / "checkpoints" / "last.pt").write_bytes(b"")


CFG = {"resume": True, "train": {"iterations": 2, "lr": 1e-3}, "hardware": {"num_threads": 1}, "algorithm": "grpo"}


def test_a_rerun_with_the_same_computation_resumes_and_a_different_one_is_refused(tmp_path):
    write_run(tmp_path, CFG)
    check_rerun(OmegaConf.create(CFG), tmp_path, ".hydra", FREE)  # the first run records its config
    assert (tmp_path / RECORD / "config.yaml").is_file()

    more = {**CFG, "train": {"iterations": 9, "lr": 1e-3}, "hardware": {"num_threads": 4}}
    write_run(tmp_path, more)  # Hydra writes the new run's .hydra/ before the task runs
    check_rerun(OmegaConf.create(more), tmp_path, ".hydra", FREE)
    assert OmegaConf.load(tmp_path / RECORD / "config.yaml").train.iterations == 9

    other = {**more, "train": {"iterations": 9, "lr": 5e-3}, "algorithm": "ppo"}
    write_run(tmp_path, other)
    with pytest.raises(ConfigError, match=r"algorithm, train\.lr differ .* resume=false .* another name"):
        check_rerun(OmegaConf.create(other), tmp_path, ".hydra", FREE)
    assert OmegaConf.load(tmp_path / ".hydra" / "config.yaml").algorithm == "grpo"  # written back

    check_rerun(OmegaConf.create({**other, "resume": False}), tmp_path, ".hydra", FREE)  # starting over is allowed


def test_a_rerun_with_another_seed_is_refused_though_the_hardware_group_may_switch(tmp_path):
    """A fixed run directory (``hydra.run.dir``) does not name ``hardware.seed``: the seed, which draws the data
    order a resume replays, is compared, while the rest of the group (where the run runs) may change."""
    seeded = {**CFG, "hardware": {"num_threads": 1, "seed": 0}}
    write_run(tmp_path, seeded)
    check_rerun(OmegaConf.create(seeded), tmp_path, ".hydra", FREE)
    elsewhere = {**CFG, "hardware": {"num_threads": 4, "seed": 0, "device": "cuda"}}
    write_run(tmp_path, elsewhere)
    check_rerun(OmegaConf.create(elsewhere), tmp_path, ".hydra", FREE)
    reseeded = {**CFG, "hardware": {"num_threads": 4, "seed": 1, "device": "cuda"}}
    write_run(tmp_path, reseeded)
    with pytest.raises(ConfigError, match=r"hardware\.seed differ"):
        check_rerun(OmegaConf.create(reseeded), tmp_path, ".hydra", FREE)


def test_a_rerun_in_another_precision_is_refused_naming_how_to_go_on(tmp_path):
    """hardware=cuda (bf16) and the CPU's fp32 name one run directory: a run begun in fp32 does not go on in bf16.
    An overridden precision names another directory, so the refusal gives the run's own with its directory."""
    recorded = {**CFG, "hardware": {"device": "cpu", "precision": "fp32", "seed": 0}}
    on_a_gpu = {**CFG, "hardware": {"device": "cuda", "precision": "bf16", "seed": 0}}
    assert differing_keys(recorded, on_a_gpu, FREE) == ["hardware.precision"]
    assert differing_keys(recorded, {**on_a_gpu, "hardware": {**on_a_gpu["hardware"], "precision": "fp32"}},
                          FREE) == []
    write_run(tmp_path, recorded)
    check_rerun(OmegaConf.create(recorded), tmp_path, ".hydra", FREE)
    write_run(tmp_path, on_a_gpu)
    with pytest.raises(ConfigError, match=r"hardware\.precision differ .*\(to go on in the run's precision: "
                                          rf"hardware\.precision=fp32 hydra\.run\.dir={re.escape(str(tmp_path))}\)"):
        check_rerun(OmegaConf.create(on_a_gpu), tmp_path, ".hydra", FREE)


def test_starting_over_sets_the_earlier_runs_outputs_aside_and_refuses_while_it_trains(tmp_path):
    write_run(tmp_path, CFG, checkpoint=True)
    check_rerun(OmegaConf.create(CFG), tmp_path, ".hydra", FREE)
    (tmp_path / "summary.json").write_text("{}")
    (tmp_path / "tensorboard").mkdir()
    (tmp_path / "run.log").write_text("the new run's log, opened by Hydra")
    with run_lock(tmp_path), pytest.raises(RunDirLocked):  # another process trains there: nothing is moved
        check_rerun(OmegaConf.create({**CFG, "resume": False}), tmp_path, ".hydra", FREE)
    assert (tmp_path / "checkpoints" / "last.pt").is_file()
    check_rerun(OmegaConf.create({**CFG, "resume": False}), tmp_path, ".hydra", FREE)
    [kept] = (tmp_path / "replaced").iterdir()
    assert sorted(p.name for p in kept.iterdir()) == ["checkpoints", "summary.json", "tensorboard"]
    assert not (tmp_path / "checkpoints" / "last.pt").exists()  # a plain command after a crash cannot resume it
    assert (tmp_path / RECORD / "config.yaml").is_file() and (tmp_path / "run.log").is_file()  # this run's record


@pytest.mark.parametrize("resume", [True, False])
def test_a_command_refused_while_another_trains_there_leaves_that_run_s_record(tmp_path, resume):
    """Hydra has written the second command's .hydra/ before it runs; refused by the lock, it changes nothing and
    puts back the running run's record (which rlar-eval and a later resume read), whether or not a checkpoint is
    there yet."""
    write_run(tmp_path, CFG, checkpoint=False)
    check_rerun(OmegaConf.create(CFG), tmp_path, ".hydra", FREE)  # the running run's record
    other = {**CFG, "train": {"iterations": 2, "lr": 0.5}, "resume": resume}
    write_run(tmp_path, other, checkpoint=False)
    with run_lock(tmp_path), pytest.raises(RunDirLocked):
        check_rerun(OmegaConf.create(other), tmp_path, ".hydra", FREE)
    for folder in (RECORD, ".hydra"):
        assert OmegaConf.load(tmp_path / folder / "config.yaml").train.lr == 1e-3


def test_without_hydra_s_output_subdir_the_config_is_still_recorded_and_compared(tmp_path):
    """``hydra.output_subdir=null`` writes no .hydra/: the run's config is recorded from itself."""
    (tmp_path / "checkpoints").mkdir()
    check_rerun(OmegaConf.create(CFG), tmp_path, None, FREE)
    (tmp_path / "checkpoints" / "last.pt").write_bytes(b"")
    assert OmegaConf.load(tmp_path / RECORD / "config.yaml").train.lr == 1e-3
    with pytest.raises(ConfigError, match=r"train\.lr differ"):
        check_rerun(OmegaConf.create({**CFG, "train": {"iterations": 2, "lr": 0.5}}), tmp_path, None, FREE)


def test_starting_over_sets_aside_the_folders_the_logger_was_told_to_write(tmp_path):
    """``logger.log_dir`` (and each of a multi logger's): the earlier run's events are not mixed into the new curves."""
    logger = {"loggers": {"tensorboard": {"log_dir": "runs/tb"}, "other": {"log_dir": "/elsewhere/tb"},
                          "default": {"log_dir": "./tensorboard/"}}}  # the default folder, spelled otherwise
    cfg = {**CFG, "logger": logger}
    write_run(tmp_path, cfg)
    check_rerun(OmegaConf.create(cfg), tmp_path, ".hydra", FREE)
    (tmp_path / "runs" / "tb").mkdir(parents=True)
    (tmp_path / "runs" / "tb" / "events.out").write_text("the earlier run's curves")
    (tmp_path / "tensorboard").mkdir()
    check_rerun(OmegaConf.create({**cfg, "resume": False}), tmp_path, ".hydra", FREE)
    [kept] = (tmp_path / "replaced").iterdir()
    assert (kept / "runs" / "tb" / "events.out").read_text() == "the earlier run's curves"
    assert (kept / "tensorboard").is_dir()  # moved once
    assert not (tmp_path / "runs" / "tb").exists() and (tmp_path / RECORD / "config.yaml").is_file()


def test_the_config_record_is_copied_file_by_file_whole(tmp_path, monkeypatch):
    """A copy cut short (a full disk) leaves the record as it was, not half a config every later run is refused
    against."""
    write_run(tmp_path, CFG)
    check_rerun(OmegaConf.create(CFG), tmp_path, ".hydra", FREE)
    recorded = (tmp_path / RECORD / "config.yaml").read_text()

    def full_disk(source, target, **_):
        Path(target).write_text(Path(source).read_text()[:10])
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(rerun.shutil, "copyfile", full_disk)
    more = {**CFG, "train": {"iterations": 9, "lr": 1e-3}}
    write_run(tmp_path, more)
    with pytest.raises(OSError, match="No space left"):
        check_rerun(OmegaConf.create(more), tmp_path, ".hydra", FREE)
    assert (tmp_path / RECORD / "config.yaml").read_text() == recorded
    assert sorted(p.name for p in (tmp_path / RECORD).iterdir()) == ["config.yaml"]  # no temporary file left


def test_an_option_added_since_the_run_was_recorded_resumes_left_off_only(tmp_path):
    """A run recorded by an rlar without algorithm.std_eps resumes under one that has it, at the value that computes
    what the code before it did; set to another value it is a difference, and so is any other key the record lacks."""
    from rlar.config.store import compose_config

    overrides = ["algorithm=ppo", "algorithm.value_head=true"]
    older = OmegaConf.to_container(compose_config(overrides), resolve=False)
    del older["algorithm"]["value_detach"]  # the key an earlier rlar did not have
    (tmp_path / RECORD).mkdir(parents=True)
    OmegaConf.save(OmegaConf.create(older), tmp_path / RECORD / "config.yaml")
    (tmp_path / "checkpoints" / "last.pt").write_bytes(b"")
    check_rerun(compose_config(overrides), tmp_path, None, FREE)
    with pytest.raises(ConfigError, match=r": algorithm\.value_detach differ"):
        check_rerun(compose_config([*overrides, "algorithm.value_detach=true"]), tmp_path, None, FREE)
    del older["algorithm"]["vf_coef"]  # not an option added since: the record is another run's
    OmegaConf.save(OmegaConf.create(older), tmp_path / RECORD / "config.yaml")
    with pytest.raises(ConfigError, match=r": algorithm\.vf_coef differ"):
        check_rerun(compose_config(overrides), tmp_path, None, FREE)


@pytest.mark.parametrize("algorithm", ["grpo", "reinforce", "ppo"])
def test_each_added_option_is_left_off_by_default(algorithm):
    """ADDED's values are the defaults: a run that does not set an added option computes what the code before did."""
    from rlar.config.rerun import ADDED, flat
    from rlar.config.store import compose_config

    defaults = flat(OmegaConf.to_container(compose_config([f"algorithm={algorithm}"]), resolve=False))
    present = {key: defaults[key] for key in ADDED if key in defaults}
    assert present and present == {key: ADDED[key] for key in present}
