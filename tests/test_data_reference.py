"""rlar.studies.data_reference: the held-out halves, the paired differences, and the data's rows (as they are and
through the tokenizer) judged as samples."""

import json
import math

import pytest
import torch

from rlar.eval.evaluate import JUDGE_METRICS
from rlar.studies.data_reference import REAL, RECONSTRUCTED, halves, paired, summarise


def test_halves_split_the_items_in_two_by_the_split_number():
    reference, stand_in = halves(9, split=0)
    assert len(reference) == 4 and len(stand_in) == 5
    assert sorted(torch.cat([reference, stand_in]).tolist()) == list(range(9))
    assert torch.equal(halves(9, split=0)[0], reference)  # the same split every time
    assert not torch.equal(halves(9, split=1)[0], reference)


def test_paired_differences_are_taken_split_by_split():
    base = [{"m": 0.5}, {"m": 0.9}, {"m": 0.1}]
    rows = [{"m": 0.6}, {"m": 1.1}, {"m": 0.1}]  # differences 0.1, 0.2, 0: mean 0.1, std 0.1, se 0.1 / sqrt(3)
    assert paired(rows, base, "m") == {"mean": pytest.approx(0.1), "se": pytest.approx(0.1 / 3 ** 0.5)}
    unmeasured = paired([*rows[:2], {"m": math.nan}], base, "m")  # a metric the judge could not measure on a split
    assert math.isnan(unmeasured["mean"]) and math.isnan(unmeasured["se"])  # statistics.stdev raised, all lost


def test_summarise_gives_each_rows_spread_and_its_difference_from_the_prior():
    def judged(value):
        return {f"eval/{m}": value for m in JUDGE_METRICS}

    rows = {REAL: [judged(0.9), judged(0.8)], "prior": [judged(0.5), judged(0.6)]}
    result = summarise(rows)
    assert result[REAL]["recall"]["mean"] == pytest.approx(0.85)
    assert result[REAL]["recall"]["std"] == pytest.approx(0.1 / 2 ** 0.5)
    assert result[REAL]["coverage"]["minus_prior"] == {"mean": pytest.approx(0.3), "se": pytest.approx(0.1)}
    assert result["prior"]["fd"]["minus_prior"] == {"mean": 0.0, "se": 0.0}


@pytest.mark.slow
def test_the_datas_rows_are_the_held_out_half_judged_against_the_other(tiny, tmp_path):
    from rlar.eval.model.build import build_eval_classifier
    from rlar.eval.model.scorer import EvalModel, train_features
    from rlar.eval.run_models import build_models, run_config
    from rlar.studies.data_reference import main

    args = [*tiny, "eval.max_items=24"]
    result = main([*args, "--splits", "2", "--cfg-scale", "2", "--out", str(tmp_path)])
    written = json.loads(next(tmp_path.glob("data_reference-splits2-*.json")).read_text())
    assert written["rows"] == json.loads(json.dumps(result)) and written["splits"] == 2
    assert list(result) == [REAL, RECONSTRUCTED, "prior", "prior, guidance 2"]
    cfg = run_config(None, args)
    data, tokenizer, _ = build_models(cfg, "cpu")
    images, labels = data.eval_images[:24], data.eval_labels[:24]
    reference, stand_in = halves(24, split=1)
    classifier = build_eval_classifier(data, cfg.cache_dir, cfg.eval.classifier_model)
    judge = EvalModel(classifier, images[reference], labels[reference], "cpu", train_features(classifier, data, "cpu"))
    with torch.no_grad():
        through = tokenizer.decode_code(tokenizer.encode_indices(images[stand_in]))  # [12, C, H, W]
    assert not torch.allclose(through, images[stand_in])  # the tokenizer loses detail: a row of its own
    for row, shown in ((REAL, images[stand_in]), (RECONSTRUCTED, through)):
        expected = judge.metrics(*judge.describe(shown, labels[stand_in]), labels[stand_in])
        for m in JUDGE_METRICS:
            assert result[row][m]["values"][1] == pytest.approx(expected[f"eval/{m}"], nan_ok=True)
    assert 0 <= result["prior"]["coverage"]["mean"] <= 1 and result["prior"]["fd"]["mean"] > 0


def test_bad_input_is_refused_with_the_value_and_the_fix(tiny, capsys):
    from rlar.studies.data_reference import main

    with pytest.raises(SystemExit, match="--splits 1: at least 2 splits"):
        main([*tiny, "--splits", "1"])
    with pytest.raises(SystemExit, match="reads the judge: set eval.classifier=true"):
        main([*tiny, "eval.classifier=false"])
    absent_inception = ["eval.inception.enabled=true", "eval.inception.weights=/absent/pt_inception.pth"]
    with pytest.raises(SystemExit, match="reads the judge"):  # no Inception is built: its weights are not checked
        main([*tiny, *absent_inception, "eval.classifier=false"])
