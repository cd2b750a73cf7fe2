"""rlar-eval (and rlar-export) of a run started in another directory reads the files the run read: a relative path
in its recorded config is anchored at the directory the run started in (Hydra's ``hydra.runtime.cwd``, which a run
started from Python records too). A recorded run takes key=value overrides of its own config; what else a command
line holds is refused in a line, or left out when a study's runs, made with it, are judged."""

import re

import pytest
from omegaconf import OmegaConf

from rlar.config.rerun import record_config
from rlar.config.store import compose_config
from rlar.eval.cli import run_command
from rlar.eval.run_models import recorded_run_overrides, run_config
from rlar.export import recorded_config


def test_a_recorded_relative_path_is_read_from_where_the_run_started(tmp_path, monkeypatch):
    started_in, elsewhere, run = tmp_path / "project", tmp_path / "elsewhere", tmp_path / "project" / "outputs" / "r"
    (started_in / "shared" / "digits_grpo").mkdir(parents=True)
    (elsewhere / "here.pt").parent.mkdir(parents=True)
    (elsewhere / "here.pt").write_bytes(b"")
    (run / ".hydra").mkdir(parents=True)
    cfg = compose_config(["reward=l2", "policy.checkpoint=shared/digits_grpo", "tokenizer.checkpoint=here.pt"])
    OmegaConf.save(cfg, run / ".hydra" / "config.yaml")
    OmegaConf.save({"hydra": {"runtime": {"cwd": str(started_in)}}}, run / ".hydra" / "hydra.yaml")
    monkeypatch.chdir(elsewhere)
    read = run_config(run, [])
    assert read.policy.checkpoint == str(started_in / "shared" / "digits_grpo")
    assert read.tokenizer.checkpoint == "here.pt"  # found from here: left as recorded
    assert recorded_config(run).policy.checkpoint == str(started_in / "shared" / "digits_grpo")  # rlar-export's
    monkeypatch.chdir(started_in)
    assert run_config(run, []).policy.checkpoint == "shared/digits_grpo"


def recorded_run(tmp_path):
    run = tmp_path / "run"
    (run / ".hydra").mkdir(parents=True)
    OmegaConf.save(compose_config(["reward=l2"]), run / ".hydra" / "config.yaml")
    return run


@pytest.mark.parametrize("override", ["reward=coverage", "+eval.extra=1", "~eval.inception", "hydra.job.chdir=true",
                                      "hydra/launcher=basic", "eval.seed", "experiment=guidance_free",
                                      "text_encoder=clip", "hparams_search=optuna"])
def test_a_recorded_run_refuses_what_shapes_a_composition_naming_the_override(tmp_path, override):
    with pytest.raises(ValueError, match=f"^'{re.escape(override)}': a recorded run takes key=value overrides"):
        run_config(recorded_run(tmp_path), [override])


@pytest.mark.parametrize(("override", "named"), [("eval.nope=1", "eval.nope"),
                                                ("eval.batch_size=ab", "eval.batch_size")])
def test_a_recorded_run_names_an_unknown_key_or_a_bad_value(tmp_path, override, named):
    run = recorded_run(tmp_path)
    with pytest.raises(ValueError, match=f"^{named}: .* in the config recorded in {re.escape(str(run))}"):
        run_config(run, [override])
    with pytest.raises(SystemExit, match=f"^config error: {named}: "):  # rlar-eval's command line says it in a line
        run_command([str(run), override, "--judge", "1"])


def test_a_study_s_command_line_reaches_its_recorded_runs_as_the_values_they_take(tmp_path):
    run = recorded_run(tmp_path)
    extra = ["reward=coverage", "hardware.num_threads=1", "+eval.extra=1", "hydra.job.chdir=true", "eval.seed=3"]
    assert recorded_run_overrides(run, extra) == ["hardware.num_threads=1", "eval.seed=3"]
    assert run_config(run, recorded_run_overrides(run, extra)).eval.seed == 3


def test_a_run_started_from_python_records_where_it_started_for_its_relative_paths(tmp_path, monkeypatch):
    started_in, elsewhere = tmp_path / "project", tmp_path / "elsewhere"
    (started_in / "shared" / "digits_grpo").mkdir(parents=True)
    elsewhere.mkdir()
    monkeypatch.chdir(started_in)
    cfg = compose_config(["reward=l2", "policy.checkpoint=shared/digits_grpo"])
    record_config(cfg, "outputs/r")  # what train_rl_loop records before it trains
    monkeypatch.chdir(elsewhere)
    assert run_config(started_in / "outputs" / "r", []).policy.checkpoint == str(started_in / "shared" / "digits_grpo")
