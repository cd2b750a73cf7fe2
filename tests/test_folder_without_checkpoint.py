"""A folder that looks like a run but holds no checkpoint (the ``outputs/default`` that ``rlar-prepare`` writes) is
refused by ``rlar-eval`` and ``rlar-export`` with one line that names it and the fix, before anything is built."""

import json
import os
import re
from pathlib import Path

import pytest
from omegaconf import OmegaConf

from rlar import export
from rlar.config.store import compose_config
from rlar.eval import cli
from rlar.eval.run_models import trained_nothing
from rlar.runtime.ema import exported_policy, no_checkpoint_message


@pytest.fixture
def prepared(tmp_path) -> Path:
    """``outputs/default`` as ``rlar-prepare`` leaves it: the recorded config, no checkpoint."""
    run = tmp_path / "outputs" / "default"
    (run / ".hydra").mkdir(parents=True)
    OmegaConf.save(compose_config([]), run / ".hydra" / "config.yaml")
    return run


@pytest.mark.parametrize("args", [["--judge", "1"], ["--samples-only"]])
def test_rlar_eval_of_a_folder_without_a_checkpoint_says_to_train_it_first(prepared, monkeypatch, args):
    monkeypatch.setattr(cli, "build_models", None)  # nothing may be built
    with pytest.raises(SystemExit) as exit_:
        cli.run_command([str(prepared), *args])
    message, folder = str(exit_.value.code), re.escape(str(prepared))
    assert "\n" not in message and re.match(rf"'{folder}' holds no checkpoint \(no checkpoints/last.pt\): .*"
                                            r"train it first with python -m rlar.run", message)


def test_rlar_eval_of_a_run_that_trained_nothing_is_not_refused(prepared, monkeypatch):
    (prepared / "summary.json").write_text(json.dumps({"iterations": 0}))  # train.iterations=0: the prior

    def built(cfg, device, run_dir):
        raise RuntimeError("built")

    monkeypatch.setattr(cli, "build_models", built)
    with pytest.raises(RuntimeError, match="built"):
        cli.run_command([str(prepared), "--judge", "1"])


def test_a_run_of_0_iterations_extended_since_has_trained(prepared):
    """``train.iterations=0`` finished (its summary says 0), then extended to more iterations in the same folder and
    stopped before its new end: its saved weights are the run's, not the prior its config builds."""
    (prepared / "summary.json").write_text(json.dumps({"iterations": 0}))
    os.utime(prepared / "summary.json", ns=(1_000, 1_000))
    assert trained_nothing(prepared)
    (prepared / "checkpoints").mkdir()
    (prepared / "checkpoints" / "last.pt").write_bytes(b"weights of iteration 5")
    assert not trained_nothing(prepared)
    os.utime(prepared / "checkpoints" / "last.pt", ns=(500, 500))  # older than the summary: of before it
    assert trained_nothing(prepared)


def test_the_weights_of_a_folder_without_a_checkpoint_are_refused_with_the_fix(prepared):
    with pytest.raises(FileNotFoundError, match=rf"'{re.escape(str(prepared))}' holds no checkpoint.*train it first"):
        exported_policy(prepared / "checkpoints")


def test_rlar_export_of_a_folder_without_a_checkpoint_exits_with_one_line(prepared, tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_:
        export.main([str(prepared), str(tmp_path / "exported")])
    assert exit_.value.code == 1
    assert capsys.readouterr().err == f"rlar-export: {no_checkpoint_message(prepared)}\n"


def test_rlar_eval_of_a_folder_of_runs_names_the_runs_in_it(tmp_path, monkeypatch):
    """``rlar-eval outputs/default`` after runs made with overrides (they live in ``outputs/default/<overrides>/``)."""
    monkeypatch.setattr(cli, "run_config", None)  # refused before any config is read
    for name in ("eval.max_items=20", "optimizer.lr=0.0001"):
        (tmp_path / "default" / name / ".hydra").mkdir(parents=True)
        (tmp_path / "default" / name / ".hydra" / "config.yaml").write_text("{}")
    with pytest.raises(SystemExit) as exit_:
        cli.run_command([str(tmp_path / "default"), "--judge", "1"])
    assert str(exit_.value.code) == (
        f"'{tmp_path / 'default'}' is not a run directory (no .hydra/config.yaml in it) nor a key=value override; the "
        f"runs in it: {tmp_path / 'default' / 'eval.max_items=20'}, {tmp_path / 'default' / 'optimizer.lr=0.0001'}: "
        "give one of them")
