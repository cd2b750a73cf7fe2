"""rlar-eval (and rlar-export) of a run started in another directory reads the files the run read: a relative path
in its recorded config is anchored at the directory the run started in (Hydra's ``hydra.runtime.cwd``)."""

from omegaconf import OmegaConf

from rlar.config.store import compose_config
from rlar.eval.run_models import run_config
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
