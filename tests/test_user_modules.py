"""A class of the user's own, named by a ``_target_`` (a reward in ``my_rewards.py`` beside their configs), imports
from the console scripts as from ``python -m rlar.run``: the current folder, and for a run dir the folder the run
started in, are on ``sys.path``."""

import importlib
import json
import subprocess
import sys
from pathlib import Path

import pytest
from omegaconf import OmegaConf

from rlar.config.store import compose_config
from rlar.eval import cli
from rlar.runtime.user_modules import importable

REWARD = '''
import torch
from rlar.contracts import Reward


class Brightness(Reward):
    def __call__(self, images, targets=None, meta=None):
        score = images.mean(dim=(1, 2, 3))
        return score, {"brightness": score}
'''


@pytest.fixture
def own_module(tmp_path, monkeypatch):
    """``tmp_path/start/my_rewards_{test}.py``; ``sys.path`` restored afterwards."""
    monkeypatch.setattr(sys, "path", list(sys.path))
    start = tmp_path / "start"
    start.mkdir()
    name = f"my_rewards_{abs(hash(str(tmp_path))) % 10**8}"  # a new module name per test: none imported yet
    (start / f"{name}.py").write_text(REWARD)
    return start, name


def test_the_current_folder_and_the_folders_given_become_importable(own_module, tmp_path, monkeypatch):
    start, name = own_module
    monkeypatch.chdir(tmp_path)
    with pytest.raises(ModuleNotFoundError):
        importlib.import_module(name)
    importable(None, start)
    assert importlib.import_module(name).Brightness
    assert sys.path[0] == str(tmp_path) and sys.path[-1] == str(start)  # the current folder first, as python -m
    importable(start)
    assert sys.path.count(str(start)) == 1  # once


def test_rlar_eval_of_a_run_imports_its_reward_from_the_folder_it_started_in(own_module, tmp_path, monkeypatch):
    """The run was made in ``start/`` with ``reward._target_=my_rewards.Brightness``; judged from elsewhere, its
    config check imports that class (before: ``No module named 'my_rewards'``)."""
    start, name = own_module
    run = tmp_path / "run"
    (run / ".hydra").mkdir(parents=True)
    cfg = compose_config(["reward=sharpness", f"reward._target_={name}.Brightness"])
    OmegaConf.save(cfg, run / ".hydra" / "config.yaml")
    OmegaConf.save({"hydra": {"runtime": {"cwd": str(start)}}}, run / ".hydra" / "hydra.yaml")
    (run / "summary.json").write_text('{"iterations": 0}')
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)

    def built(cfg, device, run_dir):
        raise RuntimeError("built: the config check passed")

    monkeypatch.setattr(cli, "build_models", built)
    with pytest.raises(RuntimeError, match="built: the config check passed"):
        cli.run_command([str(run), "--judge", "1"])


BIN = Path(sys.executable).parent


@pytest.mark.slow  # trains a tiny run through the console scripts
def test_a_reward_of_ones_own_runs_as_the_docs_show_it(tmp_path, tiny):
    """docs/rewards.md, "Your own reward": a module and an option file in a config folder of one's own, added to the
    default reward as a fourth term with ``rlar-run``, then judged with ``rlar-eval`` from another folder."""
    (tmp_path / "my_rewards.py").write_text(REWARD)
    (tmp_path / "my_conf" / "reward").mkdir(parents=True)
    (tmp_path / "my_conf" / "reward" / "brightness.yaml").write_text("_target_: my_rewards.Brightness\n")
    run = subprocess.run([str(BIN / "rlar-run"), "hydra.searchpath=[file://my_conf]",
                          "+reward@reward.components.bright=brightness", "+reward.weights.bright=1", *tiny,
                          "hydra.run.dir=run", "hardware.num_threads=1"], capture_output=True, text=True, cwd=tmp_path)
    assert run.returncode == 0, run.stderr[-3000:]
    history = json.loads((tmp_path / "run" / "summary.json").read_text())["history"]
    assert "eval/reward/bright" in history[-1]
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    judged = subprocess.run([str(BIN / "rlar-eval"), str(tmp_path / "run"), "--judge", "1", "hardware.num_threads=1"],
                            capture_output=True, text=True, cwd=elsewhere)
    assert judged.returncode == 0, judged.stderr[-3000:]
    assert "eval/fd" in judged.stdout
