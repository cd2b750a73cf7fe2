import os
import re
import subprocess
import sys

import pytest
import torch


@pytest.mark.slow
def test_prepare_trains_then_reuses_the_cache(tiny, tmp_path):
    settings = [o for o in tiny if o.startswith(("cache_dir", "tokenizer", "policy", "eval.classifier_model"))]
    args = [sys.executable, "-m", "rlar.prepare", *settings, f"hydra.run.dir={tmp_path}/prep"]
    first = subprocess.run(args, capture_output=True, text=True, cwd=tmp_path)
    assert first.returncode == 0, first.stderr[-2000:]
    assert "held-out PSNR" in first.stdout and re.search(r"judge: .*eval_classifier-\w+\.pt", first.stdout)
    assert re.search(r"reward classifier: .*eval_classifier-\w+\.pt", first.stdout)  # the default reward's own
    second = subprocess.run(args, capture_output=True, text=True, cwd=tmp_path)
    assert "using cached" in second.stderr + second.stdout
    assert "not cached yet" not in second.stderr + second.stdout


@pytest.mark.slow
def test_prepare_builds_the_classifier_of_a_reward_on_its_own_data(tiny, tmp_path):
    settings = [o for o in tiny if o.startswith(("cache_dir", "tokenizer", "policy", "eval.classifier_model"))]
    own = ["reward=class_consistency", "reward.data={_target_:rlar.data.digits.DigitsData,eval_fraction:0.3}",
           "reward.classifier.train.steps=5"]
    args = [sys.executable, "-m", "rlar.prepare", *settings, *own, f"hydra.run.dir={tmp_path}/prep"]
    proc = subprocess.run(args, capture_output=True, text=True, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert re.search(r"reward classifier: .*eval_classifier-\w+\.pt", proc.stdout)


@pytest.mark.slow
def test_prepare_refuses_what_the_run_would_before_any_work(tmp_path):
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("a one\n" * 10)
    args = [sys.executable, "-m", "rlar.prepare", "data=prompts", f"data.path={prompts}", f"cache_dir={tmp_path}/c",
            f"hydra.run.dir={tmp_path}/prep"]
    proc = subprocess.run(args, capture_output=True, text=True, cwd=tmp_path)
    assert proc.returncode == 1 and re.match(r"config error: .* has no images \(data=prompts\)", proc.stderr)
    assert "Traceback" not in proc.stderr and not (tmp_path / "c").exists()


# rlar.prepare, sending itself SIGTERM as the prior's pretraining finishes step SIGNAL_AT
SIGTERM_IN_PRETRAINING = """
import os, signal, sys
import rlar.policy.prior as prior
class Bar(prior.tqdm):
    def update(self, n=1):
        super().update(n)
        if self.n == int(os.environ["SIGNAL_AT"]):
            os.kill(os.getpid(), signal.SIGTERM)
prior.tqdm = Bar
from rlar.prepare import main
main()
"""


@pytest.mark.slow
def test_sigterm_in_the_prior_pretraining_saves_it_and_the_next_build_resumes_it(tiny, tmp_path):
    settings = [o for o in tiny if o.startswith(("tokenizer", "policy"))]

    def prepare(cache: str, *launch: str, **env: str) -> subprocess.CompletedProcess:
        args = [sys.executable, *launch, *settings, f"cache_dir={tmp_path / cache}", f"hydra.run.dir={tmp_path}/run"]
        return subprocess.run(args, capture_output=True, text=True, cwd=tmp_path, env={**os.environ, **env})

    assert prepare("never_stopped", "-m", "rlar.prepare").returncode == 0
    stopped = prepare("stopped", "-c", SIGTERM_IN_PRETRAINING, SIGNAL_AT="15")
    assert stopped.returncode == 1, stopped.stderr[-2000:]
    assert re.search(r"stopped by SIGTERM while building gpt_prior .*after step 15 of 40", stopped.stderr)
    assert sorted(p.name.split("-")[0] + "".join(p.suffixes) for p in (tmp_path / "stopped").iterdir()) == [
        "digits_vq.json", "digits_vq.pt", "gpt_prior.partial.pt"]  # the tokenizer, and the prior's saved state
    resumed = prepare("stopped", "-m", "rlar.prepare")
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert "resuming the build at step 15" in resumed.stdout + resumed.stderr
    entries = {}
    for cache in ("never_stopped", "stopped"):
        assert not list((tmp_path / cache).glob("*.partial.pt"))
        entries[cache] = torch.load(next((tmp_path / cache).glob("gpt_prior-*.pt")), weights_only=True)
    assert entries["stopped"].keys() == entries["never_stopped"].keys()
    assert all(torch.equal(entries["stopped"][k], entries["never_stopped"][k]) for k in entries["stopped"])
