"""Loggers: evaluations logged whatever ``log_every``, ``log_every`` < 1 refused, a resumed run's W&B run continued
(a fake ``wandb``), no logger option in the run directory's name, and that name one path component."""

import subprocess
import sys
from types import SimpleNamespace

import pytest
import yaml
from hydra import compose, initialize_config_dir
from hydra.errors import InstantiationException
from hydra.utils import instantiate
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from rlar.config.dir_name import MAX_NAME_BYTES, dir_name
from rlar.config.store import CONF_DIR, compose_config, register_schemas
from rlar.runtime.logger import TensorBoardLogger
from rlar.runtime.wandb_logger import RUN_ID, WandbLogger


def log_a_run(logger, output_dir):
    """Iterations 1..25 with ``eval.every=25``: the prior's evaluation at 0, then one at 25."""
    logger.open(output_dir)
    logger.scalars({"eval/fd": 30.0, "eval_cfg/fd": 31.0}, 0)
    for step in range(1, 26):
        logger.scalars({"reward/mean": float(step)}, step)
    logger.scalars({"eval/fd": 20.0, "eval_cfg/fd": 21.0}, 25)
    logger.close()


class FakeWandb:
    """``wandb.init`` and its runs: what each ``init`` was given and what each run logged."""

    def __init__(self):
        self.inits, self.rows = [], []

    def init(self, **kwargs):
        self.inits.append(kwargs)
        run_id = kwargs["id"] or f"new{len(self.inits)}"
        return SimpleNamespace(id=run_id, define_metric=lambda *a, **k: None, log=self.rows.append,
                               finish=lambda: None)


@pytest.fixture
def fake_wandb(monkeypatch):
    fake = FakeWandb()
    monkeypatch.setitem(sys.modules, "wandb", fake)
    return fake


def test_tensorboard_logs_every_evaluation_whatever_log_every(tmp_path):
    log_a_run(TensorBoardLogger(log_every=10), tmp_path)
    events = EventAccumulator(str(tmp_path / "tensorboard"), size_guidance={"scalars": 0})
    events.Reload()
    assert [e.step for e in events.Scalars("reward/mean")] == [10, 20]
    for tag in ("eval/fd", "eval_cfg/fd"):
        assert [e.step for e in events.Scalars(tag)] == [0, 25]


def test_wandb_logs_every_evaluation_whatever_log_every(tmp_path, fake_wandb):
    log_a_run(WandbLogger(log_every=10), tmp_path)
    assert fake_wandb.rows == [{"eval/fd": 30.0, "eval_cfg/fd": 31.0, "iteration": 0},
                               {"reward/mean": 10.0, "iteration": 10}, {"reward/mean": 20.0, "iteration": 20},
                               {"eval/fd": 20.0, "eval_cfg/fd": 21.0, "iteration": 25}]


@pytest.mark.parametrize("log_every", [0, -1])
@pytest.mark.parametrize("logger", [TensorBoardLogger, WandbLogger])
def test_a_log_every_below_one_is_refused_when_the_logger_is_built(logger, log_every):
    with pytest.raises(ValueError, match=rf"log_every={log_every}: .*set logger.log_every .* to 1 or more"):
        logger(log_every=log_every)


def test_a_log_every_below_one_is_refused_under_logger_multi():
    with pytest.raises(InstantiationException, match=r"log_every=0: .*logger.loggers.<name>.log_every"):
        instantiate(compose_config(["logger=multi", "logger.loggers.wandb.log_every=0"]).logger)


def test_a_resumed_run_continues_its_wandb_run_and_a_fresh_one_starts_another(tmp_path, fake_wandb):
    WandbLogger().open(tmp_path)  # a fresh run
    assert fake_wandb.inits[0]["id"] is None and (tmp_path / RUN_ID).read_text() == "new1"
    WandbLogger().open(tmp_path)  # stopped before its first checkpoint: it starts over
    assert fake_wandb.inits[1]["id"] is None and (tmp_path / RUN_ID).read_text() == "new2"
    (tmp_path / "checkpoints").mkdir()
    (tmp_path / "checkpoints" / "last.pt").write_bytes(b"")
    WandbLogger().open(tmp_path)  # resumed from its checkpoint
    assert (fake_wandb.inits[2]["id"], fake_wandb.inits[2]["resume"]) == ("new2", "allow")
    (tmp_path / ".hydra").mkdir()
    (tmp_path / ".hydra" / "config.yaml").write_text(yaml.safe_dump({"resume": False}))
    WandbLogger().open(tmp_path)  # resume=false: the run starts over
    assert fake_wandb.inits[3]["id"] is None and (tmp_path / RUN_ID).read_text() == "new4"


def hydra_dirs(overrides):
    """``(hydra.run.dir, hydra.sweep.subdir, Hydra's own override_dirname)`` of a command's overrides."""
    register_schemas()
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        hydra = compose("config", overrides=overrides, return_hydra_config=True).hydra
    return hydra.run.dir, hydra.sweep.subdir, hydra.job.override_dirname


@pytest.mark.parametrize("logger", [["logger=wandb", "logger.project=digits", "logger.mode=online"],
                                    ["logger=multi", "logger.loggers.wandb.project=digits",
                                     "logger.loggers.tensorboard.image_every=10"],
                                    ["logger=multi", "~logger.loggers.tensorboard"], ["logger.log_every=5"]])
def test_logger_options_stay_out_of_the_run_directory_name(logger):
    run_dir, subdir, _ = hydra_dirs(["algorithm.beta=0.1", "hardware.seed=1", *logger])
    assert subdir == "algorithm.beta=0.1,hardware.seed=1" and run_dir == f"outputs/default/{subdir}"


@pytest.mark.parametrize("same_numbers", [["data.num_workers=4"], ["rollout.micro_batch_size=8"],
                                          ["policy.grad_checkpointing=true", "train.ref_on_cpu=true"]])
def test_options_that_change_no_number_stay_out_of_the_run_directory_name(same_numbers):
    """Data workers decode the same batches (tests/test_data_hf_disk_and_image_folder.py) and the memory options
    compute the same numbers (tests/test_memory_options.py): a run re-run with them (after running out of memory)
    resumes."""
    run_dir, subdir, _ = hydra_dirs(["data=image_folder", "data.root=d", *same_numbers])
    assert subdir == "data.root=d,data=image_folder" and run_dir == f"outputs/default/{subdir}"


def test_other_overrides_name_the_run_directory_as_hydra_does():
    run_dir, subdir, hydras = hydra_dirs(["train.iterations=5", "algorithm=ppo", "rollout.temperature=0.9",
                                          "hardware.seed=2", "optimizer.lr=3e-5"])
    assert hydras == "algorithm=ppo,hardware.seed=2,optimizer.lr=3e-5,rollout.temperature=0.9"
    assert run_dir == f"outputs/default/{hydras}" and subdir == hydras


def test_a_value_with_slashes_names_one_run_directory_and_the_same_one_again():
    overrides = ["policy.checkpoint=shared/digits_grpo", "reward=remote", "reward.urls=[http://127.0.0.1:8711]",
                 "hardware.seed=1"]
    run_dir, subdir, _ = hydra_dirs(overrides)
    assert subdir == ("hardware.seed=1,policy.checkpoint=shared%2Fdigits_grpo,reward.urls=[http:%2F%2F127.0.0.1:8711],"
                      "reward=remote")
    assert run_dir == f"outputs/default/{subdir}" and hydra_dirs(overrides)[:2] == (run_dir, subdir)


def test_a_long_override_list_with_slashes_gets_one_file_name():
    long = ",".join(f"policy.checkpoint=runs/{i}/" + "x" * 40 for i in range(10))
    name = dir_name(long)
    assert "/" not in name and len(name.encode()) <= MAX_NAME_BYTES and name.startswith("policy.checkpoint=runs%2F0%2F")


@pytest.mark.slow
def test_a_run_with_a_slash_in_a_value_makes_one_directory(tmp_path):
    proc = subprocess.run([sys.executable, "-m", "rlar.run", "policy.checkpoint=shared/digits_grpo",
                           "train.iterations=-1"], capture_output=True, text=True, cwd=tmp_path)
    assert "config error:" in proc.stderr, proc.stderr[-2000:]
    assert [p.name for p in (tmp_path / "outputs").iterdir()] == ["default"]
    (run_dir,) = (tmp_path / "outputs" / "default").iterdir()
    assert run_dir.name == "policy.checkpoint=shared%2Fdigits_grpo"  # train.iterations: not in the name
    assert (run_dir / ".hydra" / "overrides.yaml").is_file()
