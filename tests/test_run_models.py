"""Which weights rlar-eval reads for a run dir: a run that trained nothing (train.iterations=0) saved none, and is
evaluated as the policy its config builds (the prior)."""

import json

from rlar.eval.run_models import trained_nothing


def test_only_a_run_whose_summary_says_zero_iterations_trained_nothing(tmp_path):
    for iterations, expected in ((0, True), (3, False)):
        run = tmp_path / f"run{iterations}"
        run.mkdir()
        (run / "summary.json").write_text(json.dumps({"iterations": iterations}))
        assert trained_nothing(run) is expected
    assert trained_nothing(tmp_path / "unfinished") is False  # no summary: its checkpoints decide (and errors say so)
