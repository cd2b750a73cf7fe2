"""A study's report reads only the runs made with the command line's extra overrides, and a run's judgement is
judged again once the run's weights were saved after it."""

import json
import os
from pathlib import Path

import pytest
import yaml
from omegaconf import OmegaConf

from rlar.config.store import compose_config
from rlar.eval.evaluate import JUDGE_METRICS
from rlar.eval.rejudge import judgement_dir
from rlar.eval.run_models import run_config
from rlar.studies.judged import prior_judgements, run_judgement, soup_judgement
from rlar.studies.report import collect_runs, write_report
from rlar.studies.study import RUN_NAME, load_study, sweep_dir

EXCLUDED = ["train.iterations", "name", "hardware", "hardware.num_threads"]  # as the run dirs' names leave out


@pytest.fixture
def study(tmp_path):
    path = tmp_path / "extra.yaml"
    path.write_text("overrides: [train.iterations=5]\nseeds: [0, 1]\nsettings:\n  grpo: [algorithm=grpo]\n")
    return load_study(path)


def fake_run(outputs: Path, overrides: list[str], seed: int, iterations: int) -> Path:
    """A finished run as a study's multirun leaves it: Hydra's records and a summary, no weights."""
    run_dir = sweep_dir(outputs) / (",".join(sorted(overrides)) + f",hardware.seed={seed}")
    (run_dir / ".hydra").mkdir(parents=True)
    (run_dir / "tensorboard").mkdir()
    hydra = {"job": {"config": {"override_dirname": {"exclude_keys": EXCLUDED}}},
             "overrides": {"task": [f"name={RUN_NAME}", *overrides, f"hardware.seed={seed}"]}}
    (run_dir / ".hydra" / "hydra.yaml").write_text(yaml.safe_dump({"hydra": hydra}))
    (run_dir / ".hydra" / "config.yaml").write_text(yaml.safe_dump({"hardware": {"seed": seed}, "reward": {}}))
    summary = {"iterations": iterations, "eval_reward_before": 1.0, "eval_reward_after": 2.0}
    (run_dir / "summary.json").write_text(json.dumps(summary))
    return run_dir


def test_the_report_reads_only_the_runs_made_with_the_extra_overrides(study, tmp_path):
    plain = [fake_run(tmp_path, ["train.iterations=5", "algorithm=grpo"], s, 5) for s in (0, 1)]
    extra = ["algorithm.epochs=2", "train.iterations=7", "hardware.num_threads=1"]
    with_extra = [fake_run(tmp_path, ["train.iterations=5", "algorithm=grpo", *extra], s, 7) for s in (0, 1)]
    fake_run(tmp_path, ["train.iterations=5", "algorithm=grpo", "algorithm.epochs=2"], 0, 5)  # at another length
    assert [r.path for r in collect_runs(study, tmp_path)["grpo"]] == plain
    assert [r.path for r in collect_runs(study, tmp_path, extra)["grpo"]] == with_extra


def test_hydra_s_own_extra_overrides_do_not_hide_the_finished_runs(study, tmp_path):
    """``hydra.job.chdir=false`` or ``hydra/launcher=basic`` on the command line reach Hydra, never a run's record of
    its task: the runs made under them are still this study's."""
    plain = [fake_run(tmp_path, ["train.iterations=5", "algorithm=grpo"], s, 5) for s in (0, 1)]
    assert [r.path for r in collect_runs(study, tmp_path, ["hydra.job.chdir=false", "hydra/launcher=basic"])["grpo"]
            ] == plain


def test_a_run_extended_and_stopped_before_its_new_end_is_not_read_as_finished(study, tmp_path):
    """Its summary is its earlier, shorter run's, and its checkpoint, saved after it, holds later weights."""
    runs = [fake_run(tmp_path, ["train.iterations=5", "algorithm=grpo"], s, 5) for s in (0, 1)]
    (runs[0] / "checkpoints").mkdir()
    (runs[1] / "checkpoints").mkdir()
    (runs[0] / "checkpoints" / "last.pt").write_bytes(b"")  # saved after the summary
    (runs[1] / "checkpoints" / "last.pt").write_bytes(b"")
    os.utime(runs[1] / "checkpoints" / "last.pt", ns=(1, 1))  # before it: the run's own last save
    assert [r.path for r in collect_runs(study, tmp_path)["grpo"]] == runs[1:]


def test_without_runs_made_with_the_extra_overrides_the_report_names_the_command_that_makes_them(study, tmp_path):
    fake_run(tmp_path, ["train.iterations=5", "algorithm=grpo"], 0, 5)
    with pytest.raises(FileNotFoundError, match=f"rlar.studies.ablation {study.name} algorithm.epochs=2$"):
        write_report(study, tmp_path, tmp_path / "report", extra=["algorithm.epochs=2"])


def judged_run(tmp_path: Path, iterations: int) -> tuple[Path, Path]:
    """A run of ``iterations`` (its weights saved unless 0) and its judgement over 2 eval seeds, written after."""
    run_dir = tmp_path / "run"
    (run_dir / ".hydra").mkdir(parents=True)
    OmegaConf.save({"eval": {"seed": 7}, "rollout": {"cfg_scale": 1.0, "temperature": 1.0}, "hardware": {}},
                   run_dir / ".hydra" / "config.yaml")
    (run_dir / "summary.json").write_text(json.dumps({"iterations": iterations}))
    if iterations:
        (run_dir / "checkpoints").mkdir()
        (run_dir / "checkpoints" / "last.pt").write_bytes(b"weights")
        os.utime(run_dir / "checkpoints" / "last.pt", ns=(1_000, 1_000))
    path = judgement_dir(run_dir / "eval", run_config(run_dir, []), 1.0, 1.0, [7, 8]) / "judge.json"
    path.parent.mkdir(parents=True)
    path.write_text(json.dumps({"cache_entries": [], "metrics": {f"eval/{m}": {"mean": 1.0} for m in JUDGE_METRICS}}))
    os.utime(path, ns=(2_000, 2_000))
    return run_dir, path


@pytest.mark.parametrize("iterations", [3, 0])  # 0: a run that trained nothing has no weights, its judgement stays
def test_a_run_s_judgement_is_judged_again_once_its_weights_are_saved_after_it(tmp_path, monkeypatch, iterations):
    run_dir, path = judged_run(tmp_path, iterations)
    calls = []
    rejudged = {f"eval/{m}": {"mean": 2.0} for m in JUDGE_METRICS}
    monkeypatch.setattr("rlar.studies.judged.run_command",
                        lambda argv: calls.append(argv) or path.write_text(json.dumps({"cache_entries": [],
                                                                                       "metrics": rejudged})))
    assert run_judgement(run_dir, 2)["eval/fd"]["mean"] == 1.0 and not calls  # written after the weights: read
    if iterations:  # the run extended (or trained again): its weights saved after the judgement
        os.utime(run_dir / "checkpoints" / "last.pt", ns=(3_000, 3_000))
        assert run_judgement(run_dir, 2)["eval/fd"]["mean"] == 2.0 and calls == [[str(run_dir), "--judge", "2"]]
        assert run_judgement(run_dir, 2)["eval/fd"]["mean"] == 2.0 and len(calls) == 1  # the new one is read again


def test_a_study_s_group_and_hydra_overrides_are_in_its_runs_records_and_not_given_to_their_judgement(tmp_path,
                                                                                                    monkeypatch):
    run_dir = tmp_path / "run"
    (run_dir / ".hydra").mkdir(parents=True)
    OmegaConf.save(compose_config(["reward=coverage", "hardware.num_threads=1"]), run_dir / ".hydra" / "config.yaml")
    (run_dir / "summary.json").write_text(json.dumps({"iterations": 0}))
    extra = ["reward=coverage", "hardware.num_threads=1", "hydra.job.chdir=true"]  # what made the run
    path = judgement_dir(run_dir / "eval", run_config(run_dir, []), 1.0, 1.0, [1234, 1235]) / "judge.json"
    calls = []
    judged = {f"eval/{m}": {"mean": 2.0} for m in JUDGE_METRICS}

    def judge(argv):
        calls.append(argv)
        path.parent.mkdir(parents=True)
        path.write_text(json.dumps({"cache_entries": [], "metrics": judged}))

    monkeypatch.setattr("rlar.studies.judged.run_command", judge)
    assert run_judgement(run_dir, 2, extra)["eval/fd"]["mean"] == 2.0
    assert calls == [[str(run_dir), "hardware.num_threads=1", "--judge", "2"]]


def test_a_study_s_guided_prior_is_guided_at_every_position_as_the_runs_eval_cfg_rows_are(tmp_path, monkeypatch):
    path = tmp_path / "interval.yaml"
    path.write_text("overrides: ['rollout.cfg_interval=[0.25,0.75]', eval.guided_cfg_scale=2]\nseeds: [0]\n"
                    "settings:\n  grpo: [algorithm=grpo]\njudge: 2\n")
    calls = []

    def judge(argv):
        calls.append(argv)
        out = Path(argv[argv.index("--out") + 1])
        out.mkdir(parents=True)
        metrics = {f"eval/{m}": {"mean": 1.0} for m in JUDGE_METRICS}
        (out / "judge.json").write_text(json.dumps({"cache_entries": [], "metrics": metrics}))

    monkeypatch.setattr("rlar.studies.judged.run_command", judge)
    assert set(prior_judgements(load_study(path), 2, tmp_path)) == {"prior", "prior, guidance 2"}
    unguided, guided = calls
    assert "rollout.cfg_interval=null" not in unguided  # the rollouts' own guidance: none, over the interval
    assert guided.index("rollout.cfg_interval=null") > guided.index("rollout.cfg_interval=[0.25,0.75]")
    keys = [Path(argv[argv.index("--out") + 1]).name.split("-")[1] for argv in calls]  # prior-<key>-cfg<s>-seeds<n>
    assert keys[0] != keys[1]  # judged under other configs: folders of their own, whatever the two scales


def test_a_judgement_made_before_evaluations_drew_with_top_k_is_judged_again(tmp_path, monkeypatch):
    run_dir = tmp_path / "run"
    (run_dir / ".hydra").mkdir(parents=True)
    OmegaConf.save(compose_config(["rollout.top_k=16"]), run_dir / ".hydra" / "config.yaml")
    (run_dir / "summary.json").write_text(json.dumps({"iterations": 0}))
    path = judgement_dir(run_dir / "eval", run_config(run_dir, []), 1.0, 1.0, [1234, 1235]) / "judge.json"
    path.parent.mkdir(parents=True)
    old = {f"eval/{m}": {"mean": 1.0} for m in JUDGE_METRICS}
    path.write_text(json.dumps({"cache_entries": [], "metrics": old}))  # no top_k: sampled untruncated
    calls = []
    new = {f"eval/{m}": {"mean": 2.0} for m in JUDGE_METRICS}
    monkeypatch.setattr("rlar.studies.judged.run_command", lambda argv: calls.append(argv) or path.write_text(
        json.dumps({"cache_entries": [], "top_k": 16, "top_p": None, "metrics": new})))
    assert run_judgement(run_dir, 2)["eval/fd"]["mean"] == 2.0 and len(calls) == 1
    assert run_judgement(run_dir, 2)["eval/fd"]["mean"] == 2.0 and len(calls) == 1  # recorded with it: read


def test_a_soup_is_judged_again_under_other_extra_overrides(tmp_path, monkeypatch):
    runs = []
    for seed in (0, 1):
        run_dir = tmp_path / f"run{seed}"
        (run_dir / ".hydra").mkdir(parents=True)
        OmegaConf.save(compose_config([f"hardware.seed={seed}"]), run_dir / ".hydra" / "config.yaml")
        (run_dir / "summary.json").write_text(json.dumps({"iterations": 3}))
        (run_dir / "checkpoints").mkdir()
        (run_dir / "checkpoints" / "last.pt").write_bytes(b"weights")
        runs.append(run_dir)
    monkeypatch.setattr("rlar.studies.judged.export_runs",
                        lambda dirs, folder: folder.mkdir(parents=True) or (folder / "config.json").write_text("{}"))
    calls = []

    def judge(argv):
        calls.append(argv)
        fd = 2.0 if "hardware.num_threads=2" in argv else 1.0
        out = Path(argv[argv.index("--out") + 1])
        out.mkdir(parents=True)
        metrics = {f"eval/{m}": {"mean": fd} for m in JUDGE_METRICS}
        (out / "judge.json").write_text(json.dumps({"cache_entries": [], "metrics": metrics}))

    monkeypatch.setattr("rlar.studies.judged.run_command", judge)
    study = load_study_text(tmp_path, "overrides: []\nseeds: [0, 1]\nsettings:\n  grpo: []\njudge: 2\nsoup: true\n")
    for threads, fd in ((1, 1.0), (2, 2.0), (1, 1.0)):
        extra = [f"hardware.num_threads={threads}"]
        assert soup_judgement(study, runs, 2, tmp_path / "outputs", extra)["eval/fd"]["mean"] == fd
    assert len(calls) == 2  # the third reads the first's judgement back


def load_study_text(tmp_path: Path, text: str):
    path = tmp_path / "soup.yaml"
    path.write_text(text)
    return load_study(path)


def test_a_learned_schedule_run_made_under_other_overrides_is_not_read_as_this_one(tmp_path, monkeypatch):
    from rlar.studies import schedule_study

    trained, folders = [], []

    def train(cfg, out):
        trained.append(cfg.optimizer.lr)
        folders.append(out)
        history = [{"iteration": i, **{m: float(cfg.optimizer.lr) for m in schedule_study.METRICS}} for i in (0, 1)]
        summary = {"iterations": cfg.train.iterations, "history": history}
        out.mkdir(parents=True, exist_ok=True)
        (out / "summary.json").write_text(json.dumps(summary))
        return summary

    monkeypatch.setattr(schedule_study, "train_rl_loop", train)
    for lr in (0.5, 0.25, 0.5):
        assert schedule_study.learned_point([f"optimizer.lr={lr}"], 0, tmp_path)["after"]["eval/fd"] == lr
    assert trained == [0.5, 0.25]  # the third is the first's run, read back
    schedule_study.learned_point(["optimizer.lr=0.5", "train.iterations=900"], 0, tmp_path)
    assert trained == [0.5, 0.25, 0.5] and folders[2] == folders[0]  # more iterations: the first run, extended
