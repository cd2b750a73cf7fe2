"""A judgement (``judge.json``) is written whole or not at all, and one left unreadable (half written by a judge
stopped before writes were atomic, or edited by hand) is judged again with a warning naming it."""

import json
import logging
import math
import os

import pytest
from omegaconf import OmegaConf

from rlar.eval import cli, rejudge
from rlar.eval.evaluate import JUDGE_METRICS
from rlar.eval.rejudge import write_judgement
from rlar.runtime import atomic_files
from rlar.studies.judged import read_or_judge
from rlar.studies.report import mean_and_std, mean_std

METRICS = {f"eval/{m}": {"mean": 2.0, "std": 0.5, "values": [1.5, 2.5]} for m in JUDGE_METRICS}


@pytest.mark.parametrize("text", ['{"metrics": {"eval/fd": {"mean": 1.', '{"seeds": [7, 8]}', '[1, 2]',
                                  '{"metrics": [1, 2]}'])
def test_an_unreadable_judgement_newer_than_the_weights_is_judged_again_with_a_warning_naming_it(
        tmp_path, monkeypatch, caplog, text):
    weights, path = tmp_path / "last.pt", tmp_path / "judge" / "judge.json"
    weights.write_bytes(b"weights")
    os.utime(weights, ns=(1_000, 1_000))
    path.parent.mkdir()
    path.write_text(text)
    os.utime(path, ns=(2_000, 2_000))  # written after the weights: current, were it readable
    calls = []
    monkeypatch.setattr("rlar.studies.judged.run_command", lambda argv: calls.append(argv) or write_judgement(
        path.parent, METRICS, {"seeds": [7, 8], "cache_entries": []}))
    with caplog.at_level(logging.WARNING, logger="rlar.studies.judged"):
        assert read_or_judge(path, ["run", "--judge", "2"], weights) == METRICS
    assert calls == [["run", "--judge", "2"]]
    (warning,) = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert warning.startswith(f"judgement {path} is unreadable (") and warning.endswith("): judging again")
    assert read_or_judge(path, ["run", "--judge", "2"], weights) == METRICS and len(calls) == 1  # now read


def test_a_judgement_interrupted_while_written_leaves_the_old_one_whole(tmp_path, monkeypatch):
    out = tmp_path / "judge"
    write_judgement(out, METRICS, {"seeds": [7, 8]})
    old = (out / "judge.json").read_text()

    def interrupted(src, dst):  # the new text written beside it, then the job is stopped before the rename
        raise KeyboardInterrupt

    monkeypatch.setattr(atomic_files.os, "replace", interrupted)
    with pytest.raises(KeyboardInterrupt):
        write_judgement(out, {m: {**v, "mean": 3.0} for m, v in METRICS.items()}, {"seeds": [7, 8]})
    assert (out / "judge.json").read_text() == old and os.listdir(out) == ["judge.json"]  # no temporary file left


def test_a_judgement_stopped_at_a_seed_resumes_there_for_the_same_weights_only(tmp_path, monkeypatch):
    judged, stop_at = [], {3}

    def evaluate(policy, tokenizer, reward, data, eval_cfg, *rest):
        if eval_cfg.seed in stop_at:
            raise KeyboardInterrupt  # the judgement is stopped while it judges seed 3
        judged.append(eval_cfg.seed)
        return {f"eval/{m}": float(eval_cfg.seed + i) for i, m in enumerate(JUDGE_METRICS)}

    monkeypatch.setattr(rejudge, "evaluate_under", evaluate)
    cfg = OmegaConf.create({"eval": {"seed": 1}, "cache_dir": None})
    weights = tmp_path / "last.pt"
    weights.write_bytes(b"weights")
    run = {"run": None, "checkpoint": str(weights)}

    def judge(seeds):
        return rejudge.judge_over_seeds(cfg, None, None, None, None, {}, seeds, "cpu", None, tmp_path / "seeds",
                                        {"cfg_scale": 1.0, "weights": cli.weights_stamp(run)})

    with pytest.raises(KeyboardInterrupt):
        judge([1, 2, 3])
    assert judged == [1, 2] and sorted(p.name for p in (tmp_path / "seeds").iterdir()) == ["seed1.json", "seed2.json"]
    stop_at.clear()
    result = judge([1, 2, 3])
    assert judged == [1, 2, 3] and result["eval/fd"]["values"] == [1.0, 2.0, 3.0]  # 1 and 2 read, 3 judged
    os.utime(weights, ns=(1, 1))  # other weights (saved again): every seed is judged again
    assert judge([1, 2, 3])["eval/fd"]["values"] == [1.0, 2.0, 3.0] and judged == [1, 2, 3, 1, 2, 3]


def test_a_kept_seed_without_a_metric_the_judge_now_measures_is_judged_again(tmp_path):
    path, identity = tmp_path / "seed1.json", {"cfg_scale": 1.0}
    every = {f"eval/{m}": 1.0 for m in JUDGE_METRICS}
    older = {k: v for k, v in every.items() if k != "eval/memorization"}  # kept before the judge measured it
    path.write_text(json.dumps({"identity": identity, "metrics": older}))
    assert rejudge.kept_seed(path, identity, lambda: every) == every
    assert rejudge.kept_seed(path, identity, lambda: pytest.fail("judged again")) == every  # now kept whole


def test_a_metric_the_judge_could_not_measure_on_some_seed_has_a_nan_spread(tmp_path):
    """Density is NaN with 5 held-out items or fewer: the seeds' std is NaN, where ``statistics.stdev`` raised after
    every seed had been judged (kept seeds here, read back without judging)."""
    identity = {"weights": []}
    for seed, (fd, density) in zip((7, 8), ((2.0, float("nan")), (4.0, 0.9)), strict=True):
        metrics = {f"eval/{m}": 1.0 for m in JUDGE_METRICS} | {"eval/fd": fd, "eval/density": density}
        (tmp_path / f"seed{seed}.json").write_text(json.dumps({"identity": identity, "metrics": metrics}))
    result = rejudge.judge_over_seeds(None, None, None, None, None, {}, [7, 8], "cpu", kept=tmp_path,
                                      identity=identity)
    assert result["eval/fd"]["mean"] == 3.0 and result["eval/fd"]["std"] == pytest.approx(2**0.5)
    assert math.isnan(result["eval/density"]["mean"]) and math.isnan(result["eval/density"]["std"])
    assert rejudge.seed_spread([float("nan")])["std"] == 0.0  # one seed: no spread
    assert math.isnan(mean_and_std([1.0, float("nan")])[1]) and mean_std([1.0, float("nan")]) == "nan ± nan"

