"""End to end: a tiny default run with eval.inception, then ``rlar-eval`` of its checkpoint (samples .npz, grid,
FID / IS / precision / recall against held-out digits). The Inception weights are random (tests/conftest.py)."""

import json
import math
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from rlar.eval.cli import run_command

pytestmark = pytest.mark.slow  # trains a tiny run and starts processes


def test_rlar_eval_of_a_tiny_run(tiny, cache_dir, inception_weights, tmp_path):
    reference = tmp_path / "heldout.npz"
    run_command(["--make-reference", str(reference), f"cache_dir={cache_dir}", "--max-images", "24"])
    with np.load(reference) as archive:
        assert archive["arr_0"].dtype == np.uint8 and archive["arr_0"].shape == (24, 32, 32, 3)
    assert reference.with_suffix(".png").is_file()

    run = tmp_path / "run"
    inception = ["eval.inception.enabled=true", f"eval.inception.weights={inception_weights}",
                 f"eval.inception.reference={reference}", "eval.inception.num_samples=8"]
    proc = subprocess.run([sys.executable, "-m", "rlar.run", *tiny, *inception, f"hydra.run.dir={run}"],
                          capture_output=True, text=True, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    summary = json.loads((run / "summary.json").read_text())
    for key in ("eval_inception_fid_before", "eval_inception_fid_after", "eval_inception_is_after"):
        assert math.isfinite(summary[key]) and summary[key] > 0, key
    assert {"eval/inception_precision", "eval/inception_recall", "eval/inception_density",
            "eval/inception_coverage"} <= summary["history"][-1].keys()

    out = tmp_path / "eval"
    proc = subprocess.run([sys.executable, "-m", "rlar.eval", str(run), "--num-samples", "20", "--batch-size", "10",
                           "--cfg-scale", "1.5", "--temperature", "0.9", "--reference", str(reference),
                           "--inception-weights", str(inception_weights), "--out", str(out)],
                          capture_output=True, text=True, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    print(proc.stdout)
    with np.load(out / "samples.npz") as archive:
        samples = archive["arr_0"]
    assert samples.dtype == np.uint8 and samples.shape == (20, 32, 32, 3)
    assert (samples[..., 0] == samples[..., 2]).all()  # grayscale digits, repeated to RGB
    assert (out / "samples.png").is_file()
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["num_samples"] == 20 and metrics["num_reference"] == 24 and metrics["cfg_scale"] == 1.5
    assert metrics["fid"] > 0 and metrics["is"] >= 1 and 0 <= metrics["precision"] <= 1 and 0 <= metrics["recall"] <= 1
    assert "Inception FID" in proc.stdout and "precision" in proc.stdout

    # --judge: the embedded judge under 2 eval seeds; the first, eval.seed, repeats the run's own final evaluation
    judged = run_command([str(run), "--judge", "2", "--out", str(tmp_path / "judge")])
    record = json.loads((tmp_path / "judge" / "judge.json").read_text())
    assert record["seeds"] == [1234, 1235]  # eval.seed (the default) and the next
    fd = record["metrics"]["eval/fd"]
    assert fd["values"][0] == pytest.approx(summary["eval_fd_after"], rel=1e-6)
    assert fd["values"][1] != fd["values"][0]  # another seed, other samples
    assert fd["mean"] == pytest.approx(sum(fd["values"]) / 2) and fd["std"] > 0
    assert judged["metrics"]["eval/class_acc"]["values"][0] == pytest.approx(summary["eval_class_acc_after"])
    # the cache entries it rests on beside its config: the tokenizer, the prior and the judge
    names = [Path(path).name.rsplit("-", 1)[0] for path, _, _ in record["cache_entries"]]
    assert sorted(names) == ["digits_vq", "eval_classifier", "gpt_prior"]
