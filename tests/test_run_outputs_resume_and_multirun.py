"""Smoke runs of the embedded default at a tiny size: outputs, TensorBoard, resume, multirun."""

import json
import math
import subprocess
import sys

import pytest
import torch
from omegaconf import OmegaConf
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

import rlar.loop
from rlar.config.store import compose_config
from rlar.loop import train_rl_loop

pytestmark = pytest.mark.slow  # every test here trains (in process or through the CLI)


def run_cli(args, cwd):
    proc = subprocess.run([sys.executable, "-m", "rlar.run", *args], capture_output=True, text=True, cwd=cwd)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc


def test_cli_run_writes_summary_tensorboard_and_checkpoint(tiny, tmp_path):
    out = tmp_path / "run"
    proc = run_cli([*tiny, f"hydra.run.dir={out}"], cwd=tmp_path)
    assert f"outputs: {out}" in proc.stdout
    summary = json.loads((out / "summary.json").read_text())
    assert {"eval_reward_before", "eval_reward_after", "history", "timings"} <= summary.keys()
    # the default reward sums z-scores over each evaluation batch (here one): its mean is 0; its terms are logged
    assert abs(summary["eval_reward_before"]) < 1e-5 and abs(summary["eval_reward_after"]) < 1e-5
    assert {"eval/reward/disc", "eval/reward/fd", "eval/reward/cls"} <= summary["history"][-1].keys()
    assert torch.load(out / "checkpoints" / "last.pt", weights_only=True)["iteration"] == 2

    events = EventAccumulator(str(out / "tensorboard"), size_guidance={"images": 0, "scalars": 0})
    events.Reload()
    assert "reward/mean" in events.Tags()["scalars"]
    assert len(events.Scalars("reward/mean")) == 2
    # GRPO's next-token term on the batch's own digits: a cross-entropy over 64 codes, so positive and below log 64
    assert all(0 < e.value < math.log(64) for e in events.Scalars("loss/ntp"))
    for tag in ("loss/policy", "policy/ratio_max_abs_dev", "time/rollout", "eval/reward", "perf/tokens_per_s"):
        assert tag in events.Tags()["scalars"], tag
    image = events.Images("samples/input_then_group")[0]
    assert image.width > image.height > 0  # one row per item: input | its G samples
    assert not (tmp_path / "outputs").exists() or out.is_relative_to(tmp_path)


def test_first_update_has_ratio_one(tiny, tmp_path):
    cfg = compose_config([*tiny, "rollout.temperature=0.7", "rollout.cfg_scale=2.0"])
    summary = train_rl_loop(cfg, tmp_path)
    events = EventAccumulator(str(tmp_path / "tensorboard"))
    events.Reload()
    assert all(e.value <= 1e-5 for e in events.Scalars("policy/ratio_max_abs_dev"))
    assert summary["iterations"] == 2


def test_restart_continues_from_the_checkpoint(tiny, tmp_path, monkeypatch):
    cfg = compose_config([*tiny, "train.iterations=4", "eval.every=100"])
    calls = []
    real_update = rlar.loop.policy_update

    def crash_on_third(*args, **kwargs):
        calls.append(1)
        if len(calls) == 3:
            raise KeyboardInterrupt("stopped by the test")
        return real_update(*args, **kwargs)

    monkeypatch.setattr(rlar.loop, "policy_update", crash_on_third)
    with pytest.raises(KeyboardInterrupt):
        train_rl_loop(cfg, tmp_path)
    saved = torch.load(tmp_path / "checkpoints" / "last.pt", weights_only=True)
    assert saved["iteration"] == 2
    steps_per_iteration = 16 // 8  # batch 4 x G 4 sequences, minibatches of 8
    assert max(s["step"] for s in saved["optimizer"]["state"].values()) == 2 * steps_per_iteration

    calls.clear()
    monkeypatch.setattr(rlar.loop, "policy_update", lambda *a, **k: (calls.append(1), real_update(*a, **k))[1])
    summary = train_rl_loop(cfg, tmp_path)
    assert len(calls) == 2  # iterations 3 and 4 only
    final = torch.load(tmp_path / "checkpoints" / "last.pt", weights_only=True)
    assert final["iteration"] == 4
    assert max(s["step"] for s in final["optimizer"]["state"].values()) == 4 * steps_per_iteration
    assert summary["eval_reward_before"] == saved["summary"]["eval_reward_before"]

    calls.clear()  # the finished run started again: nothing trains, and its summary keeps its timings
    again = train_rl_loop(cfg, tmp_path)
    assert calls == [] and again["timings"] == summary["timings"] and summary["timings"]["time/update"] > 0


def test_a_run_stopped_at_what_a_rerun_makes_its_last_iteration_is_evaluated_there(tiny, tmp_path,
                                                                                   stop_after_two_updates):
    """Stopped after iteration 2 of 4 (eval.every=100: only the last iteration evaluates), then ended with
    train.iterations=2: iteration 2 is evaluated as a straight 2-iteration run evaluates it. Before, the rerun ran
    no iteration, and its "after RL" numbers were the prior's."""
    common = [*tiny, "eval.every=100"]
    straight = train_rl_loop(compose_config([*common, "train.iterations=2"]), tmp_path / "straight")
    with pytest.MonkeyPatch.context() as patch, pytest.raises(KeyboardInterrupt):
        stop_after_two_updates(patch, "policy_update")
        train_rl_loop(compose_config([*common, "train.iterations=4"]), tmp_path / "cut")
    ended = train_rl_loop(compose_config([*common, "train.iterations=2"]), tmp_path / "cut")
    assert [h["iteration"] for h in ended["history"]] == [0, 2]
    assert ended["history"][-1] == straight["history"][-1] and ended["eval_fd_after"] == straight["eval_fd_after"]
    assert torch.load(tmp_path / "cut" / "checkpoints" / "last.pt", weights_only=True)["summary"]["history"] == \
        ended["history"]  # saved: a later start does not evaluate it again


def test_multirun_runs_one_job_per_algorithm(tiny, tmp_path):
    run_cli(["-m", "algorithm=reinforce,grpo", *tiny, f"hydra.sweep.dir={tmp_path}/sweep"], cwd=tmp_path)
    summaries = sorted(p.parent.name for p in (tmp_path / "sweep").glob("*/summary.json"))
    assert len(summaries) == 2
    assert any("algorithm=reinforce" in s for s in summaries) and any("algorithm=grpo" in s for s in summaries)


def test_a_run_recorded_before_an_option_existed_resumes_through_the_cli(tiny, tmp_path):
    """rlar-run's own Hydra app composes the recorded overrides for a key the recorded config lacks (an option added
    to rlar since): at its default the run resumes; set otherwise it is refused, naming the key."""
    out = tmp_path / "run"
    base = [*(o for o in tiny if not o.startswith("train.iterations=")), f"hydra.run.dir={out}"]
    run_cli([*base, "train.iterations=1"], cwd=tmp_path)
    recorded = out / "checkpoints" / "hydra" / "config.yaml"
    older = OmegaConf.load(recorded)
    del older.algorithm["std_eps"]
    OmegaConf.save(older, recorded)
    refused = subprocess.run([sys.executable, "-m", "rlar.run", *base, "train.iterations=2", "algorithm.std_eps=1e-4"],
                             capture_output=True, text=True, cwd=tmp_path)
    assert refused.returncode != 0 and "algorithm.std_eps differ" in refused.stderr
    run_cli([*base, "train.iterations=2"], cwd=tmp_path)
    assert torch.load(out / "checkpoints" / "last.pt", weights_only=True)["iteration"] == 2
