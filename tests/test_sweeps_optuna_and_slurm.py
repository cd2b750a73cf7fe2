"""Sweeps: the Optuna search configs (compose, every searched value valid, a real 2-trial study that continues,
one failed trial tolerated) and the SLURM preset (its fields become the intended #SBATCH lines)."""

import json
import os
import subprocess
import sys

import pytest
from hydra import compose, initialize_config_dir
from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.core.override_parser.types import ChoiceSweep, IntervalSweep

from rlar.config.store import CONF_DIR, compose_config, register_schemas
from rlar.config.validate import check_config

SEARCHES = sorted(p.stem for p in (CONF_DIR / "hparams_search").glob("*.yaml"))
NEEDS_SWEEP = "the Optuna sweeper is an optional extra: pip install -e '.[sweep]' (make test installs it)"
NEEDS_SLURM = "the submitit launcher is an optional extra: pip install -e '.[slurm]' (make test installs it)"


def compose_with_hydra(overrides):
    """The composed config with its ``hydra`` node, as a multirun would see it."""
    register_schemas()
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        return compose("config", overrides=overrides, return_hydra_config=True)


def sample_values(sweep_string: str) -> list:
    """The values a search-space entry can take: every choice, or an interval's two ends."""
    sweep = OverridesParser.create().parse_override(f"k={sweep_string}").value()
    if isinstance(sweep, ChoiceSweep):
        return list(sweep.list)
    assert isinstance(sweep, IntervalSweep), sweep_string
    return [sweep.start, sweep.end]


def test_there_is_a_search():
    assert "grpo_optuna" in SEARCHES


@pytest.mark.parametrize("search", SEARCHES)
def test_search_composes_and_every_searched_value_is_valid(search):
    pytest.importorskip("hydra_plugins.hydra_optuna_sweeper", reason=NEEDS_SWEEP)
    cfg = compose_with_hydra([f"+hparams_search={search}"])
    sweeper = cfg.hydra.sweeper
    assert sweeper._target_.endswith("OptunaSweeper")
    assert sweeper.direction == "minimize" and cfg.optimized_metric == "eval/fd"  # rlar.run returns eval/fd
    assert sweeper.storage.startswith("sqlite:///") and sweeper.study_name
    assert sweeper.sampler.seed is not None
    assert 0 < sweeper.max_failure_rate * sweeper.n_jobs <= 1  # tolerates one failed trial per batch
    assert cfg.hydra.callbacks.make_sweep_dir._target_ == "rlar.config.sweep_dir.MakeSweepDir"
    for key, space in sweeper.params.items():
        for value in sample_values(space):
            check_config(compose_config([f"+hparams_search={search}", f"{key}={value}"]))


def optuna_sweep(tiny, sweep_dir, *extra):
    """``+hparams_search=grpo_optuna`` on the tiny default, 1 iteration a trial, the group size left to the search."""
    tiny = [o for o in tiny if not o.startswith(("algorithm.num_generations=", "algorithm.minibatch_size="))]
    return subprocess.run(
        [sys.executable, "-m", "rlar.run", "-m", "+hparams_search=grpo_optuna", *tiny, "train.iterations=1",
         "hydra.sweeper.n_jobs=1", f"hydra.sweep.dir={sweep_dir}", *extra],
        capture_output=True, text=True, cwd=sweep_dir.parent, env={**os.environ, "OMP_NUM_THREADS": "1"})


@pytest.mark.slow
def test_optuna_study_runs_two_trials_and_continues(tiny, tmp_path):
    optuna = pytest.importorskip("optuna", reason=NEEDS_SWEEP)
    pytest.importorskip("hydra_plugins.hydra_optuna_sweeper", reason=NEEDS_SWEEP)
    sweep_dir = tmp_path / "search"  # does not exist yet: the callback creates it before the study opens
    proc = optuna_sweep(tiny, sweep_dir, "hydra.sweeper.n_trials=2")
    assert proc.returncode == 0, proc.stderr[-3000:]

    study = optuna.load_study(study_name="grpo_optuna", storage=f"sqlite:///{sweep_dir}/optuna.db")
    trials = study.get_trials(states=[optuna.trial.TrialState.COMPLETE])
    assert len(trials) == 2
    searched = {"optimizer.lr", "algorithm.clip_eps", "algorithm.beta", "algorithm.num_generations"}
    assert searched <= trials[0].params.keys()
    runs = sorted(sweep_dir.glob("*/summary.json"))
    assert len(runs) == 2
    after = sorted(json.loads(p.read_text())["eval_fd_after"] for p in runs)
    assert sorted(t.value for t in trials) == pytest.approx(after)  # the objective is each run's last eval/fd
    assert study.best_value == min(after)

    proc = optuna_sweep(tiny, sweep_dir, "hydra.sweeper.n_trials=1")  # the same command continues the study
    assert proc.returncode == 0, proc.stderr[-3000:]
    study = optuna.load_study(study_name="grpo_optuna", storage=f"sqlite:///{sweep_dir}/optuna.db")
    assert len(study.get_trials(states=[optuna.trial.TrialState.COMPLETE])) == 3


@pytest.mark.slow
def test_optuna_study_tolerates_one_failed_trial(tiny, tmp_path):
    optuna = pytest.importorskip("optuna", reason=NEEDS_SWEEP)
    pytest.importorskip("hydra_plugins.hydra_optuna_sweeper", reason=NEEDS_SWEEP)
    # one batch of two trials over a single choice; a trial with reward.kind=bogus fails when the reward is
    # built. The sampler's seed 0 draws l2 and bogus (checked below), so exactly one trial of the two fails.
    search = ["hydra.sweeper.params=null", "reward=l2", "reward.kind=choice(l2,bogus)", "hydra.sweeper.n_trials=2",
              "hydra.sweeper.n_jobs=2"]
    for rate, ok in (("0.5", True), ("0.0", False)):
        sweep_dir = tmp_path / f"rate{rate}"
        proc = optuna_sweep(tiny, sweep_dir, *search, f"hydra.sweeper.max_failure_rate={rate}")
        assert (proc.returncode == 0) == ok, proc.stderr[-3000:]
        study = optuna.load_study(study_name="grpo_optuna", storage=f"sqlite:///{sweep_dir}/optuna.db")
        states = {t.params["reward.kind"]: t.state.name for t in study.trials}
        assert states == {"l2": "COMPLETE", "bogus": "FAIL"}
        assert "reward.kind must be one of" in proc.stderr + proc.stdout


def test_slurm_preset_becomes_the_intended_sbatch_lines(tmp_path, monkeypatch):
    submitit = pytest.importorskip("submitit", reason=NEEDS_SLURM)
    pytest.importorskip("hydra_plugins.hydra_submitit_launcher", reason=NEEDS_SLURM)
    from hydra_plugins.hydra_submitit_launcher.config import BaseQueueConf
    from omegaconf import OmegaConf
    from submitit.slurm.slurm import _make_sbatch_string

    launcher = compose_with_hydra(["hydra/launcher=slurm"]).hydra.launcher
    assert launcher._target_.endswith("SlurmLauncher")
    params = OmegaConf.to_container(launcher, resolve=False)
    params.pop("_target_")
    folder = params.pop("submitit_folder")
    # what the launcher does with them: generic names as they are, the rest prefixed with the cluster
    generic = set(OmegaConf.structured(BaseQueueConf).keys())
    params = {k if k in generic else f"slurm_{k}": v for k, v in params.items() if k != "max_num_timeout"}
    fake_bin = tmp_path / "bin"  # submitit looks for srun before it builds a SLURM executor
    fake_bin.mkdir()
    (fake_bin / "srun").write_text("#!/bin/sh\n")
    (fake_bin / "srun").chmod(0o755)
    monkeypatch.setenv("PATH", f"{fake_bin}{os.pathsep}{os.environ['PATH']}")
    executor = submitit.AutoExecutor(folder=tmp_path / "submitit", cluster="slurm")
    executor.update_parameters(**{k: v for k, v in params.items() if k != "name"})
    sbatch = _make_sbatch_string(command="python -m rlar.run", folder=str(tmp_path), **executor._executor.parameters)
    for line in ("--nodes=1", "--ntasks-per-node=1", "--gpus-per-node=1", "--cpus-per-task=8", "--mem=32GB",
                 "--time=240"):
        assert f"#SBATCH {line}\n" in sbatch, line
    assert "--partition" not in sbatch and "--account" not in sbatch  # null: the site's defaults
    assert folder.startswith("${hydra.sweep.dir}")  # submitit's logs sit beside the runs
