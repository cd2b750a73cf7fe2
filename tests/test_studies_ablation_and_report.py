"""Config-file studies: every study composes and passes the checks, and a tiny study runs (a 2-job multirun
per setting), reports numbers equal to its runs' summaries, and reuses its finished runs when run again."""

import json
import os
import re
import signal
import subprocess
import sys
from pathlib import Path

import matplotlib.pyplot as plt
import pytest
import torch
from omegaconf import OmegaConf
from PIL import Image
from safetensors.torch import load_file

from rlar.config.store import compose_config
from rlar.config.validate import check_config
from rlar.eval.evaluate import JUDGE_METRICS
from rlar.runtime.ema import exported_policy
from rlar.studies.ablation import main as ablation_main
from rlar.studies.ablation import run_sweeps, sweep_commands
from rlar.studies.judged import prior_judgements, read_or_judge
from rlar.studies.report import (
    ATTRIBUTE_COLUMNS,
    Run,
    attribute_notes,
    collect_runs,
    curves_figure,
    defining,
    eval_model_table,
    judged_table,
    ranking,
    relative_change,
    reward_terms_notes,
    reward_terms_table,
    table,
    write_report,
    zscored_note,
)
from rlar.studies.study import EXPERIMENTS_DIR, Study, load_study, sweep_dir

STUDIES = sorted(p.stem for p in EXPERIMENTS_DIR.glob("*.yaml"))


def test_the_five_studies_exist():
    assert {"algorithms", "group_size", "kl_beta", "rollout_mode", "cfg"} <= set(STUDIES)


@pytest.mark.parametrize("name", STUDIES)
def test_every_run_of_a_study_composes_and_passes_the_checks(name):
    study = load_study(name)
    assert study.title and len(study.seeds) >= 3 and len(study.settings) >= 2
    configs = []
    for label in study.settings:  # one seed each: the seeds' runs differ only in hardware.seed
        cfg = compose_config([*study.run_overrides(label), f"hardware.seed={study.seeds[-1]}"])
        check_config(cfg)
        configs.append(cfg)
    # settings differ from each other, and each setting's overrides are what its runs get
    assert len({str(c) for c in configs}) == len(configs)
    commands = sweep_commands(study, ["hardware.num_threads=1"])
    assert len(commands) == len(study.settings)
    for cmd, setting in zip(commands, study.settings.values(), strict=True):
        assert cmd[1:4] == ["-m", "rlar.run", "-m"] and set(setting) <= set(cmd)
        assert f"hardware.seed={','.join(map(str, study.seeds))}" in cmd


def test_a_setting_replaces_the_studys_value_of_a_key_it_sets_itself(tmp_path):
    path = tmp_path / "lr.yaml"
    path.write_text("overrides: [optimizer.lr=3.0e-5, reward=discriminator_loo_fd_class, train.iterations=5]\n"
                    "settings:\n  base: []\n"
                    "  faster: [optimizer.lr=5.0e-5, +reward@reward.components.cov=coverage]\n")
    study = load_study(path)
    assert study.run_overrides("base") == ["optimizer.lr=3.0e-5", "reward=discriminator_loo_fd_class",
                                           "train.iterations=5"]
    # the lr is replaced; the reward group stays (a component added under it is another key)
    assert study.run_overrides("faster") == ["reward=discriminator_loo_fd_class", "train.iterations=5",
                                             "optimizer.lr=5.0e-5", "+reward@reward.components.cov=coverage"]
    (cmd,) = [c for c in sweep_commands(study) if "optimizer.lr=5.0e-5" in c]
    assert "optimizer.lr=3.0e-5" not in cmd
    assert compose_config(study.run_overrides("faster")).optimizer.lr == 5e-5


def test_group_size_study_keeps_the_samples_per_iteration():
    study = load_study("group_size")
    for label in study.settings:
        cfg = compose_config(study.run_overrides(label))
        assert cfg.train.batch_size * cfg.algorithm.num_generations == 64


def test_a_run_matches_its_setting_however_a_value_is_spelled():
    # a multirun records optimizer.lr=3.0e-5 as optimizer.lr=3e-05: both are the same setting
    recorded = ["name=ablations", "optimizer.lr=3e-05", "train.iterations=100", "hardware.seed=1"]
    asked = ["name=ablations", "optimizer.lr=3.0e-5", "train.iterations=100"]
    assert defining(recorded, {"train.iterations"}) == defining(asked, {"train.iterations"})
    assert defining(recorded, set()) != defining(["name=ablations", "optimizer.lr=1e-4", "train.iterations=100"], set())
    assert defining(recorded, {"train.iterations"}) == {"name=ablations", "optimizer.lr=3e-05"}  # seed dropped too


@pytest.mark.parametrize("argv", [["cfg", "hardware.num_threads=1", "--dry-run"],
                                  ["cfg", "--dry-run", "hardware.num_threads=1"]])  # as experiments/README writes it
def test_the_overrides_may_come_before_or_after_the_flags(argv, capsys):
    ablation_main(argv)
    commands = capsys.readouterr().out.splitlines()
    assert len(commands) == 2 and all("hardware.num_threads=1" in c.split(" ") for c in commands)


def test_an_unknown_study_names_the_known_ones():
    with pytest.raises(FileNotFoundError, match="algorithms"):
        load_study("no_such_study")


@pytest.mark.parametrize("settings,seeds,refused", [
    ("  reinforce: algorithm=reinforce", "[0]", r"setting 'reinforce' must be a list of key=value overrides"),
    ("  the default:", "[0]", r"setting 'the default' must be a list of key=value overrides.*; got None"),
    ("  grpo: [algorithm=grpo]", "3", r"seeds must be a list of integers"),
    ("  lr: [optimizer.lr=1e-4,3e-4]", "[0]", r"setting 'lr' must be a list of key=value overrides"),
])
def test_a_study_file_of_the_wrong_shape_is_refused_naming_the_entry(tmp_path, settings, seeds, refused):
    path = tmp_path / "bad.yaml"
    path.write_text(f"seeds: {seeds}\nsettings:\n{settings}\n")
    with pytest.raises(ValueError, match=refused):
        load_study(path)


@pytest.mark.parametrize("setting,refused", [
    ("[algorithm.num_generation=2]", r"setting 'typo': .*num_generation"),
    ("['optimizer.lr=1e-4,3e-4']", r"setting 'typo': .*[Aa]mbiguous value"),
])
def test_a_setting_that_does_not_compose_is_refused_before_any_setting_runs(tmp_path, capsys, setting, refused):
    """Even with --dry-run, and before the first setting (which composes) would train."""
    path = tmp_path / "typo.yaml"
    path.write_text(f"seeds: [0]\nsettings:\n  fine: [algorithm=grpo]\n  typo: {setting}\n")
    with pytest.raises(SystemExit):
        ablation_main([str(path), "--dry-run"])
    assert re.search(refused, capsys.readouterr().err) and not capsys.readouterr().out


@pytest.fixture
def tiny_study(tmp_path, tiny):
    """Two settings x two seeds of the tiny default, 3 iterations with an evaluation every one: GRPO with the
    default reward (a discriminator and a moving-average FD, which learn), REINFORCE with -L2 (which does not);
    every run, the prior and each setting's soup of its two runs judged over 2 eval seeds."""
    path = tmp_path / "tiny_study.yaml"
    fixed = [o for o in tiny if not o.startswith(("train.iterations=", "eval.every="))]
    path.write_text(json.dumps({  # JSON is YAML
        "title": "tiny", "overrides": [*fixed, "train.iterations=3", "eval.every=1"], "seeds": [0, 1],
        "settings": {"grpo": ["algorithm=grpo"], "reinforce": ["algorithm=reinforce", "reward=l2"]}, "judge": 2,
        "soup": True}))
    return load_study(path)


@pytest.mark.parametrize("state, learns", [
    ({}, False),
    ({"pixel": {}, "perceptual_digits": {}}, False),  # a mix of stateless rewards, as checkpoints once saved it
    ({"history": {"-1": [torch.zeros(2)]}}, True),  # loo_fd's moving averages
    ({"disc": {"model": {"w": torch.zeros(1)}}}, True),  # a mix holding a discriminator
])
def test_a_run_s_reward_learns_when_its_checkpoint_holds_reward_state(tmp_path, state, learns):
    (tmp_path / "checkpoints").mkdir()
    torch.save({"reward": state}, tmp_path / "checkpoints" / "last.pt")
    assert Run(tmp_path, 0, -1.0, -0.5, 10).reward_learns is learns
    assert Run(tmp_path / "unfinished", 0, -1.0, -0.5, 10).reward_learns is False


@pytest.mark.slow
def test_a_study_runs_reports_and_reuses_its_runs(tiny_study, tmp_path, tb_scalars):
    outputs = tmp_path / "outputs"
    run_sweeps(tiny_study, ["hardware.num_threads=1"], outputs)
    run_dirs = sorted(p.parent for p in sweep_dir(outputs).glob("*/summary.json"))
    assert len(run_dirs) == 4  # named by Hydra from the overrides, less those that do not change the result
    for d, (a, s) in zip(run_dirs, [(a, s) for a in ("grpo", "reinforce") for s in (0, 1)], strict=True):
        assert {f"algorithm={a}", f"hardware.seed={s}"} <= set(d.name.split(","))
        assert "num_threads" not in d.name and "iterations" not in d.name

    report = write_report(tiny_study, outputs, tmp_path / "report")
    text = report.read_text()
    # the settings' own rewards, not the first run's alone
    assert "training reward (`reward=discriminator_loo_fd_class` or `reward=l2`, as the setting says)" in text
    for label, runs in collect_runs(tiny_study, outputs).items():
        summaries = [json.loads((r.path / "summary.json").read_text()) for r in runs]
        after = [s["eval_reward_after"] for s in summaries]
        before = summaries[0]["eval_reward_before"]
        row = next(line for line in text.splitlines() if line.startswith(f"| {label} |"))
        cells = [c.strip() for c in row.strip("|").split("|")]
        assert cells[2] == "0, 1"
        after_ = torch.tensor(after, dtype=torch.float64)
        if label == "grpo":  # the default reward z-scores its terms over each batch: its mean is 0 whatever moved
            assert after_.abs().max() < 1e-5
            assert cells[3:7] == ["0 (z-scored)", "0 (z-scored)", "–", "n/a: z-scored over each batch; its terms below"]
        else:
            assert cells[3] == f"{before:.4f}"
            assert cells[4] == f"{after_.mean():.4f} ± {after_.std():.4f}"  # sample std over the seeds
            assert cells[5] == " / ".join(f"{a:.4f}" for a in after)
            assert cells[6] == f"{100 * (after_.mean() - before) / abs(before):+.1f} %"  # the change of the mean
        # the evaluation model's table: eval/fd prior, final (mean ± std) and the relative change of the means
        fd_row = [line for line in text.splitlines() if line.startswith(f"| {label} |")][1]
        fd_cells = [c.strip() for c in fd_row.strip("|").split("|")]
        fd_before, fd_after = summaries[0]["eval_fd_before"], torch.tensor([s["eval_fd_after"] for s in summaries])
        assert fd_cells[1:3] == [f"{fd_before:.3f}", f"{fd_after.mean():.3f} ± {fd_after.std():.3f}"]
        assert fd_cells[3] == f"{100 * (fd_after.mean() - fd_before) / fd_before:+.1f} %"
        # then class_acc, precision, recall, density, coverage and diversity, three cells each
        diversity_after = torch.tensor([s["eval_diversity_after"] for s in summaries])
        assert fd_cells[19:21] == [f"{summaries[0]['eval_diversity_before']:.3f}",
                                   f"{diversity_after.mean():.3f} ± {diversity_after.std():.3f}"]
        # the curve is read back from TensorBoard: the evaluations of iterations 0..3
        assert [r.curves["eval/reward"][3] for r in runs] == pytest.approx(after)
        assert [tb_scalars(r.path, "eval/reward") for r in runs] == [
            pytest.approx([h["eval/reward"] for h in s["history"]]) for s in summaries]
    # judged over 2 eval seeds: the first repeats each run's own final evaluation (and the prior's, its first)
    section = text.split("**Judged over 2 eval seeds**")[1]
    judged_rows = {line.split("|")[1].strip(): line for line in section.splitlines()
                   if line.startswith("| ") and not line.startswith("| |")}
    prior_files = sorted((outputs / "ablations" / "judged" / "tiny_study").glob("prior-*/judge.json"))
    assert len(prior_files) == 1 and "prior" in judged_rows  # the tiny default evaluates unguided only
    prior_fd = json.loads(prior_files[0].read_text())["metrics"]["eval/fd"]["values"][0]
    assert prior_fd == pytest.approx(json.loads((run_dirs[0] / "summary.json").read_text())["eval_fd_before"])
    for label, runs in collect_runs(tiny_study, outputs).items():
        means = []
        for r in runs:
            judged = json.loads(next((r.path / "eval").glob("judge-*-seeds*/judge.json")).read_text())["metrics"]
            assert judged["eval/fd"]["values"][0] == pytest.approx(r.summary["eval_fd_after"])
            assert len(judged["eval/fd"]["values"]) == 2
            means.append(judged["eval/fd"]["mean"])
        cells = [c.strip() for c in judged_rows[label].strip("|").split("|")]
        means_ = torch.tensor(means, dtype=torch.float64)
        assert cells[1] == f"{means_.mean():.2f} ± {means_.std():.2f}"
        assert cells[-1] == " / ".join(f"{m:.2f}" for m in means)
    # each setting's soup: the average of its runs' evaluated weights, judged under the runs' config
    for label, runs in collect_runs(tiny_study, outputs).items():
        folder = next(f for f in (outputs / "ablations" / "soups" / "tiny_study").iterdir()
                      if json.loads((f / "config.json").read_text())["soup"]["runs"] == [str(r.path.resolve())
                                                                                         for r in runs])
        soup = load_file(folder / "model.safetensors")
        evaluated = [exported_policy(r.path / "checkpoints") for r in runs]
        for key, value in soup.items():
            torch.testing.assert_close(value, (evaluated[0][key] + evaluated[1][key]) / 2)
        judged = json.loads(next(folder.glob("judge-*/judge.json")).read_text())["metrics"]
        fd = torch.tensor(judged["eval/fd"]["values"], dtype=torch.float64)
        cells = [c.strip() for c in judged_rows[f"{label}: soup of its 2 runs"].strip("|").split("|")]
        assert cells[1] == f"{fd.mean():.2f} ± {fd.std():.2f}"
    assert "train.iterations=3" in text and "**Ranking** by the judged eval/fd above (lower first" in text
    assert "eval/precision prior | eval/precision final" in text and "eval/diversity final" in text
    with Image.open(tmp_path / "report" / "curves.png") as image:
        image.verify()
        assert image.format == "PNG" and image.size[0] > 600

    # the same study again: finished runs are reused (no training), and the report is the same
    checkpoints = {d: (d / "checkpoints" / "last.pt").stat().st_mtime_ns for d in run_dirs}
    proc = subprocess.run([sys.executable, "-m", "rlar.studies.ablation", str(tiny_study.path),
                           "hardware.num_threads=1", "--outputs", str(outputs)], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert {d: (d / "checkpoints" / "last.pt").stat().st_mtime_ns for d in run_dirs} == checkpoints
    again = (tiny_study.report_dir / "REPORT.md").read_text()
    table = re.compile(r"^\| (grpo|reinforce) \|.*", re.M)
    assert [m.group(0).rsplit("|", 2)[0] for m in table.finditer(again)] == [
        m.group(0).rsplit("|", 2)[0] for m in table.finditer(text)]  # all but the s / it column


def test_a_reward_that_z_scores_its_terms_reports_no_mean_of_its_own():
    study = Study("s", Path("s.yaml"), "t", [], [0, 1], {"mix": [], "l2": ["reward=l2"]})
    mix = OmegaConf.to_yaml(compose_config([]).reward)  # the default: three terms, z-scored over the batch
    runs = {"mix": [Run(Path("."), s, 0.0, 1e-8, 3, reward=mix) for s in (0, 1)],
            "l2": [Run(Path("."), s, -0.2, -0.1, 3, reward="_target_: l2\nnormalize: false\n") for s in (0, 1)]}
    rows = table(study, runs).splitlines()
    assert rows[2] == ("| mix | none | 0, 1 | 0 (z-scored) | 0 (z-scored) | – "
                       "| n/a: z-scored over each batch; its terms below | – |")
    assert rows[3] == "| l2 | `reward=l2` | 0, 1 | -0.2000 | -0.1000 ± 0.0000 | -0.1000 / -0.1000 | +50.0 % | – |"
    assert Run(Path("."), 0, 0.0, 0.0, 3, reward="r").reward_normalized is False  # not a mapping
    elsewhere = "_target_: my_rewards.Mix\nnormalize: true\n"  # a user's class, not importable here
    assert Run(Path("."), 0, 0.0, 0.0, 3, reward=elsewhere).reward_normalized is True
    assert "mean of 0 by construction" in zscored_note(runs) and zscored_note({"l2": runs["l2"]}) == ""


def test_the_curves_show_every_setting_and_no_z_scored_mean():
    mix = OmegaConf.to_yaml(compose_config([]).reward)  # the default: z-scored over the batch

    def run(reward, fd):
        curves = {"eval/reward": {0: 0.0, 10: 0.0}, "reward/mean": {1: 0.0, 2: 0.0}, "eval/fd": {0: 30.0, 10: fd}}
        return Run(Path("."), 0, 0.0, 0.0, 10, curves=curves, reward=reward)

    runs = {f"setting {i}": [run(mix, 20.0 + i)] for i in range(11)}  # more settings than ten colours
    fig = curves_figure(runs, "t")
    assert [ax.get_title() for ax in fig.axes] == ["eval/fd (the judge)"]  # no panel of means that are 0
    assert [t.get_text() for t in fig.legends[0].get_texts()] == [f"setting {i} (n=1)" for i in range(11)]
    assert len({line.get_color() for line in fig.axes[0].get_lines()}) == 11
    runs["l2"] = [run("_target_: l2\n", 40.0)]  # a reward that is not z-scored: its means are drawn, alone
    fig = curves_figure(runs, "t")
    assert [ax.get_title().split(" ")[0] for ax in fig.axes] == ["eval/reward", "eval/fd", "reward/mean"]
    assert [line.get_label() for line in fig.axes[0].get_lines()] == ["l2 (n=1)"]
    assert len(fig.axes[1].get_lines()) == 12
    unjudged = {"mix": [Run(Path("."), 0, 0.0, 0.0, 10, reward=mix, curves={"eval/reward": {0: 0.0, 10: 0.0}})]}
    assert [ax.get_title().split(" ")[0] for ax in curves_figure(unjudged, "t").axes] == ["eval/reward"]  # all there is
    plt.close("all")


def test_relative_change_of_the_means_and_a_zero_prior():
    assert relative_change([0.5, 0.5], [0.6, 0.7]) == "+30.0 %"
    assert relative_change([-0.2], [-0.1]) == "+50.0 %"
    assert relative_change([0.0, 0.0], [0.25, 0.5]) == "n/a"  # a classifier that gets nothing right before RL


def test_settings_rank_by_the_judges_fd_when_every_run_has_it():
    def run(fd, reward_after):
        return Run(Path("."), 0, -1.0, reward_after, 3, summary={"eval_fd_after": fd}, reward="r")

    runs = {"a": [run(30.0, -0.1), run(32.0, -0.1)], "b": [run(20.0, -0.9), run(22.0, -0.9)], "c": [run(25.0, 0.0)]}
    assert ranking(runs) == "b > c (Δ 4.00, 2.8 std) > a (Δ 6.00, 4.2 std)"  # lower eval/fd first, whatever the reward
    runs["c"] = [Run(Path("."), 0, -1.0, 0.0, 3, summary={}, reward="r")]  # one run without the judge: by reward
    assert ranking(runs).startswith("c > a (Δ 0.1000")



def test_a_judged_study_ranks_by_the_judged_fd_where_one_evaluation_would_order_it_otherwise():
    def run(fd):
        return Run(Path("."), 0, -1.0, 0.0, 3, summary={"eval_fd_after": fd}, reward="r")

    def judged(*fds):
        return {"eval/fd": {"mean": sum(fds) / len(fds), "values": list(fds)}}

    runs = {"beta=0": [run(19.6), run(19.5)], "beta=0.01": [run(18.9), run(18.9)], "prior": [run(30.0)]}
    runs["prior"][0].iterations = 0
    assert ranking(runs).startswith("prior") is False and ranking(runs).startswith("beta=0.01")  # one evaluation
    priors = {"prior": judged(29.0, 31.0)}  # an untrained setting: its eval seeds
    settings = {"beta=0": [judged(19.0, 19.4), judged(19.4, 19.4)], "beta=0.01": [judged(19.3, 19.5), judged(19.5)]}
    # beta=0: runs' means 19.2, 19.4 (19.3 ± 0.141); beta=0.01: 19.4, 19.5 (19.45 ± 0.071); prior: 30 ± 1.414
    assert ranking(runs, (priors, settings, {})) == "beta=0 > beta=0.01 (Δ 0.15, 1.1 std) > prior (Δ 10.55, 7.5 std)"


def test_settings_with_a_z_scored_reward_are_not_ranked_by_its_eval_reward():
    mix = OmegaConf.to_yaml(compose_config([]).reward)  # the default: a mix z-scored over the batch

    def run(after):
        return Run(Path("."), 0, 0.0, after, 3, summary={}, reward=mix)

    assert ranking({"a": [run(1e-9)], "b": [run(-1e-9)]}).startswith("none: the eval reward of a mix")
    plain = {f"cls-{i}": [Run(Path("."), 0, 0.0, after, 3, summary={}, reward="cls\n")] for i, after in ((1, 0.5),
                                                                                                    (2, 0.75))}
    expected = "cls-2 > cls-1 (Δ 0.2500); not ranked, as their eval reward is another function (or a z-scored mix's): a"
    assert ranking({"a": [run(0.0)], **plain}) == expected  # whichever setting comes first

def test_the_attribute_table_shows_the_prompts_checks_only_when_every_run_measured_them():
    def run(all_before, all_after):
        summary = {"eval_attr_all_acc_before": all_before, "eval_attr_all_acc_after": all_after}
        return Run(Path("."), 0, 0.0, 0.0, 3, summary=summary, reward="r")

    runs = {"prior": [run(0.4, 0.4), run(0.4, 0.4)], "rl": [run(0.4, 0.5), run(0.4, 0.7)]}
    rows = eval_model_table(runs, ATTRIBUTE_COLUMNS).splitlines()
    assert rows[0] == "| setting | eval/attr/all_acc prior | eval/attr/all_acc final | change |"
    assert rows[3] == "| rl | 0.400 | 0.600 ± 0.141 | +50.0 % |"  # the mean over seeds, relative to the prior's
    assert attribute_notes(runs).startswith("\n- **eval/attr/***")
    runs["plain"] = [Run(Path("."), 0, 0.0, 0.0, 3, summary={}, reward="r")]  # a run without captions: no table
    assert eval_model_table(runs, ATTRIBUTE_COLUMNS) == "" and attribute_notes(runs) == ""


def test_the_reward_terms_table_reads_each_term_from_the_first_and_last_evaluation(tmp_path):
    (tmp_path / "checkpoints").mkdir()
    torch.save({"reward": {"disc": {"model": {"w": torch.zeros(1)}}}}, tmp_path / "checkpoints" / "last.pt")

    def run(cls_after, disc_after, path=Path(".")):
        history = [{"iteration": 0, "eval/reward": 0.0, "eval/reward/disc": 0.5, "eval/reward/cls": 0.8},
                   {"iteration": 5, "eval/reward": 0.0, "eval/reward/disc": 9.0, "eval/reward/cls": 0.1},
                   {"iteration": 10, "eval/reward": 0.0, "eval/reward/disc": disc_after, "eval/reward/cls": cls_after}]
        return Run(path, 0, 0.0, 0.0, 10, summary={"history": history}, reward="r")

    runs = {"fixed": [run(0.9, -0.5), run(1.1, -1.5)], "learning": [run(0.9, -0.5, tmp_path)]}
    assert reward_terms_table(runs).splitlines() == [
        "| setting | reward term | prior | final | change |", "|---|---|---|---|---|",
        "| fixed | eval/reward/disc | 0.5000 | -1.0000 ± 0.7071 | -300.0 % |",
        "| fixed | eval/reward/cls | 0.8000 | 1.0000 ± 0.1414 | +25.0 % |",      # (1.0 - 0.8) / 0.8
        "| learning | eval/reward/disc | 0.5000 | -0.5000 | n/a: the term learns |",  # its checkpoint holds its state
        "| learning | eval/reward/cls | 0.8000 | 0.9000 | +12.5 % |"]
    assert reward_terms_notes(runs).startswith("\n- **reward terms**")
    lone = tmp_path / "lone"  # a reward that is not a mix: its state is its own, not keyed by its terms
    (lone / "checkpoints").mkdir(parents=True)
    torch.save({"reward": {"model": {"w": torch.zeros(1)}, "buffer": []}}, lone / "checkpoints" / "last.pt")
    history = [{"eval/reward": 0.5, "eval/reward/disc_logit": 0.5},
               {"eval/reward": -2.0, "eval/reward/disc_logit": -2.0}]
    lone_runs = {"discriminator": [Run(lone, 0, 0.5, -2.0, 10, summary={"history": history}, reward="r")]}
    assert reward_terms_table(lone_runs).splitlines()[-1] == (
        "| discriminator | eval/reward/disc_logit | 0.5000 | -2.0000 | n/a: the term learns |")
    single = {"l2": [Run(Path("."), 0, -0.2, -0.1, 10, reward="r",
                         summary={"history": [{"eval/reward": -0.2}, {"eval/reward": -0.1}]})]}
    assert reward_terms_table(single) == "" and reward_terms_notes(single) == ""  # a reward without terms


def test_the_judged_table_averages_each_runs_mean_over_eval_seeds():
    def judged(fd_values, acc):
        metrics = {f"eval/{m}": {"values": [acc, acc], "mean": acc} for m in ("class_acc", "precision", "recall",
                                                                             "density", "coverage", "diversity",
                                                                             "memorization")}
        return {**metrics, "eval/fd": {"values": fd_values, "mean": sum(fd_values) / len(fd_values)}}

    prior = {"prior": judged([30.0, 34.0], 0.8)}
    settings = {"rl": [judged([18.0, 20.0], 0.9), judged([22.0, 24.0], 0.95)], "empty": []}
    rows = judged_table(prior, settings).splitlines()
    assert rows[0] == ("| | eval/fd | eval/class_acc | eval/precision | eval/recall | eval/density | eval/coverage "
                       "| eval/diversity | eval/memorization | eval/fd per run |")
    # the prior: mean ± sample std over its eval seeds (sqrt(8) = 2.83)
    assert rows[2] == "| prior | 32.00 ± 2.83" + " | 0.800 ± 0.000" * 7 + " | – |"
    # a setting: runs' means 19 and 23, so 21 ± sqrt(8); class_acc 0.9 and 0.95 give 0.925 ± 0.035
    assert rows[3] == "| rl | 21.00 ± 2.83" + " | 0.925 ± 0.035" * 7 + " | 19.00 / 23.00 |"
    assert len(rows) == 4  # a setting without finished runs has no row
    # the soup of a setting's runs: one model, mean ± std over its eval seeds, after the settings
    with_soup = judged_table(prior, settings, {"rl": judged([16.0, 17.0], 0.97)}).splitlines()
    assert with_soup[:4] == rows
    assert with_soup[4] == "| rl: soup of its 2 runs | 16.50 ± 0.71" + " | 0.970 ± 0.000" * 7 + " | – |"


@pytest.mark.parametrize("study, error", [({"soup": True}, "needs judge: N"), ({"soup": "yes", "judge": 2}, "soup=")])
def test_a_study_soup_is_true_or_false_and_needs_the_judge(tmp_path, study, error):
    path = tmp_path / "bad.yaml"
    path.write_text(json.dumps({"title": "t", "seeds": [0, 1], "settings": {"a": []}, **study}))
    with pytest.raises(ValueError, match=error):
        load_study(path)


def test_a_study_judge_must_be_a_positive_count(tmp_path):
    path = tmp_path / "bad.yaml"
    path.write_text(json.dumps({"title": "t", "seeds": [0], "settings": {"a": []}, "judge": 0}))
    with pytest.raises(ValueError, match="judge is the number of eval seeds"):
        load_study(path)
    path.write_text(json.dumps({"title": "t", "seeds": [0], "settings": {"a": []}, "judge": 3}))
    assert load_study(path).judge == 3


def test_a_judgement_without_one_of_the_judges_metrics_is_judged_anew(tmp_path, monkeypatch):
    path = tmp_path / "judge.json"
    every = {f"eval/{m}": {"mean": 0.5, "values": [0.5]} for m in JUDGE_METRICS}
    older = {k: v for k, v in every.items() if k != "eval/coverage"}  # written before the judge measured coverage
    path.write_text(json.dumps({"cache_entries": [], "metrics": older}))
    calls = []
    monkeypatch.setattr("rlar.studies.judged.run_command",
                        lambda argv: calls.append(argv) or path.write_text(json.dumps({"cache_entries": [],
                                                                                       "metrics": every})))
    assert read_or_judge(path, ["RUN", "--judge", "1"]) == every and calls == [["RUN", "--judge", "1"]]
    assert read_or_judge(path, ["RUN", "--judge", "1"]) == every and len(calls) == 1  # read again


def test_the_prior_is_judged_anew_when_the_config_it_is_judged_under_changes(tmp_path, monkeypatch):
    """The prior's judgement is kept under a key of the whole config, not of the overrides as written: an
    experiment whose defaults change, or another thread count, is judged again; the same config is read back."""
    judged = []

    def fake_judge(argv):  # stands in for rlar-eval: records the call and writes what it would
        out = Path(argv[argv.index("--out") + 1])
        out.mkdir(parents=True)
        metrics = {f"eval/{m}": {"mean": float(len(judged))} for m in JUDGE_METRICS}
        (out / "judge.json").write_text(json.dumps({"cache_entries": [], "metrics": metrics}))
        judged.append(argv)

    monkeypatch.setattr("rlar.studies.judged.run_command", fake_judge)
    path = tmp_path / "study.yaml"
    path.write_text("overrides: [train.iterations=5]\nsettings:\n  base: []\n")
    study = load_study(path)
    first = prior_judgements(study, 2, tmp_path)
    assert prior_judgements(study, 2, tmp_path) == first and len(judged) == 1  # read back, not judged again
    prior_judgements(study, 2, tmp_path, ["hardware.num_threads=7"])
    study.overrides = ["train.iterations=5", "eval.samples_per_item=2"]  # as when an experiment's default changes
    prior_judgements(study, 2, tmp_path)
    assert len(judged) == 3 and len({argv[argv.index("--out") + 1] for argv in judged}) == 3


SAVES_ON_SIGINT = """
import signal, sys, time
stop = []
signal.signal(signal.SIGINT, lambda *_: stop.append(1))  # as a run does: finish the step, save, then stop
print("ready", flush=True)
while not stop:
    time.sleep(0.01)
time.sleep(1.0)  # the step and the save, longer than subprocess.run's quarter of a second
open(sys.argv[1], "w").write("saved")
"""

PARENT = """
import signal, sys
from rlar.studies.ablation import run_until_it_stops
# a terminal's foreground process: Ctrl-C raises KeyboardInterrupt, even where the test runs in a background job
# (which starts with SIGINT ignored, and Python then leaves it so)
signal.signal(signal.SIGINT, signal.default_int_handler)
run_until_it_stops([sys.executable, "-c", sys.argv[1], sys.argv[2]])
"""


@pytest.mark.slow
def test_a_ctrl_c_during_a_study_waits_for_the_run_to_save(tmp_path):
    saved = tmp_path / "saved"
    parent = subprocess.Popen([sys.executable, "-c", PARENT, SAVES_ON_SIGINT, str(saved)], stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True, start_new_session=True)
    assert parent.stdout.readline().strip() == "ready"
    os.killpg(parent.pid, signal.SIGINT)  # a terminal's Ctrl-C: the whole foreground group
    _, err = parent.communicate(timeout=60)
    assert saved.read_text() == "saved" and "KeyboardInterrupt" in err
