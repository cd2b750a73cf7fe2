"""``train_rl_loop`` from Python does what ``rlar-run`` does before training: it checks the config, records it in
the run directory (where rlar-eval and rlar-export read it) and refuses a directory holding a run of another
config."""

import pytest
from omegaconf import OmegaConf

import rlar.loop
from rlar.config.store import compose_config
from rlar.config.validate import ConfigError
from rlar.eval.run_models import is_run_dir
from rlar.loop import train_rl_loop


@pytest.fixture
def trained_nothing(monkeypatch):
    """``fine_tune`` replaced by one that returns the directory it was given."""
    monkeypatch.setattr(rlar.loop, "fine_tune", lambda cfg, out: {"output_dir": str(out)})


def test_the_run_directory_defaults_to_outputs_name_and_holds_the_config(tmp_path, monkeypatch, trained_nothing):
    monkeypatch.chdir(tmp_path)
    cfg = compose_config(["reward=l2", "name=mine"])
    assert train_rl_loop(cfg)["output_dir"] == "outputs/mine"
    assert OmegaConf.load(tmp_path / "outputs" / "mine" / ".hydra" / "config.yaml") == cfg
    assert is_run_dir(tmp_path / "outputs" / "mine")
    assert train_rl_loop(OmegaConf.to_container(cfg), tmp_path / "there")["output_dir"] == str(tmp_path / "there")


def test_a_bad_config_is_refused_before_anything_is_written(tmp_path, trained_nothing):
    with pytest.raises(ConfigError, match="train.max_grad_norm"):
        train_rl_loop(compose_config(["train.max_grad_norm=-1"]), tmp_path / "run")
    assert not (tmp_path / "run").exists()


def test_a_directory_holding_a_run_of_another_config_is_refused(tmp_path, trained_nothing):
    out = tmp_path / "run"
    train_rl_loop(compose_config(["reward=l2"]), out)
    (out / "checkpoints" / "last.pt").write_bytes(b"")  # as a finished run leaves it
    train_rl_loop(compose_config(["reward=l2", "train.iterations=600"]), out)  # a key kept out of the name: resumes
    with pytest.raises(ConfigError, match="holds a run with another config: hardware.seed"):
        train_rl_loop(compose_config(["reward=l2", "hardware.seed=1"]), out)  # another seed is another run
    with pytest.raises(ConfigError, match="holds a run with another config: .*reward"):
        train_rl_loop(compose_config(["reward=l1"]), out)
    assert OmegaConf.load(out / ".hydra" / "config.yaml").reward.kind == "l2"  # the record is the run's
    train_rl_loop(compose_config(["reward=l1", "resume=false"]), out)  # starts over, the old run set aside
    assert list((out / "replaced").iterdir())[0].joinpath("checkpoints", "last.pt").is_file()
