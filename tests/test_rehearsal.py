"""The CPU rehearsal of the LlamaGen recipe (``make rehearsal``) at its smallest: GPT-B with random weights in the
released layouts, 2-process FSDP2 with a sharded checkpoint, then a resume in one process."""

import json
import sys

import pytest
import torch

from rlar.config.store import compose_config
from rlar.studies import measured_run, rehearsal

# 4 x 4 tokens and 20 images; the rest as make rehearsal: 2 items per process with G = 2 (2 minibatches accumulated
# per optimizer step), a DataLoader worker, 2 iterations + 1, 2 evaluation items (one per process)
SMALLEST = ["--image-size", "64", "--images-per-class", "10"]


@pytest.fixture(scope="module")
def rehearsed(tmp_path_factory):
    work = tmp_path_factory.mktemp("rehearsal")
    return work, rehearsal.main(["--work", str(work), *SMALLEST])


@pytest.mark.parametrize("processes", [1, 2, 4])
def test_the_recipe_takes_one_optimizer_step_per_rollout_on_any_number_of_processes(processes, tmp_path):
    """Each process's minibatches of the composed recipe are accumulated into one step (the GPU check's 1-process
    rehearsal took 2 steps per rollout)."""
    overrides = rehearsal.recipe_overrides(tmp_path, rehearsal.Settings(processes=processes))
    cfg = compose_config([o for o in overrides if not o.startswith("hydra.")])
    minibatches = cfg.train.batch_size // processes * cfg.algorithm.num_generations // cfg.algorithm.minibatch_size
    assert minibatches == cfg.algorithm.grad_accum  # per process, accumulated into one optimizer step


@pytest.mark.slow
def test_both_runs_exit_0(rehearsed):
    _, result = rehearsed
    assert [result["phases"][p]["returncode"] for p in ("fsdp_2proc", "resume_1proc")] == [0, 0]
    assert set(result["phases"]["fsdp_2proc"]["peak_rss_mib"]) == {"rank0", "rank1"}
    assert set(result["phases"]["resume_1proc"]["peak_rss_mib"]) == {"rank0"}


@pytest.mark.slow
def test_the_checkpoint_is_sharded(rehearsed):
    work, result = rehearsed
    saved = result["phases"]["fsdp_2proc"]["checkpoint"]  # what the 2 processes left for the resume
    assert (saved["format"], saved["iteration"]) == ("sharded", 2)
    assert not {"policy", "optimizer"} & set(saved["keys"])  # weights and optimizer state live in the shards
    assert [f for f in saved["shard_files"] if f.endswith(".distcp")] == ["__0_0.distcp", "__1_0.distcp"]
    checkpoints = work / "run" / "checkpoints"
    assert not (checkpoints / "last_sharded.tmp").exists()
    policy = torch.load(checkpoints / "policy.pt", weights_only=True)  # exported whole at the end
    assert policy["layers.11.attention.wqkv.weight"].shape == (3 * 768, 768)  # GPT-B


@pytest.mark.slow
def test_the_resume_starts_at_2_and_finishes_3(rehearsed):
    work, result = rehearsed
    log = (work / "resume_1proc.log").read_text()
    assert "at iteration 2" in log and "re-seeded" in log  # 2 processes' streams, resumed in 1
    first, resumed = result["phases"]["fsdp_2proc"]["summary"], result["phases"]["resume_1proc"]["summary"]
    assert (first["iterations"], first["world_size"], first["strategy"]) == (2, 2, "fsdp")
    assert (resumed["iterations"], resumed["world_size"], resumed["strategy"]) == (3, 1, "none")
    assert result["phases"]["resume_1proc"]["checkpoint"]["iteration"] == 3


@pytest.mark.slow
def test_summary_is_consistent(rehearsed):
    work, result = rehearsed
    summary = json.loads((work / "run" / "summary.json").read_text())
    assert summary == result["phases"]["resume_1proc"]["summary"]
    assert [h["iteration"] for h in summary["history"]] == [0, 2, 3]  # the prior, the first run's end, the resume's
    assert summary["eval_reward_before"] == summary["history"][0]["eval/reward"]
    assert summary["eval_reward_after"] == summary["history"][-1]["eval/reward"]
    assert summary["history"][1] == result["phases"]["fsdp_2proc"]["summary"]["history"][-1]
    assert set(summary["timings"]) == {"time/rollout", "time/decode", "time/reward", "time/update"}


@pytest.mark.parametrize(("device", "processes", "expected", "absent"), [
    ("cpu", 2, ["--nproc_per_node=2", "hardware=fsdp", "hardware.device=cpu", "hardware.precision=fp32"], []),
    ("cuda", 1, ["--nproc_per_node=1", "hardware=fsdp", "hardware.device=cuda"], ["hardware.precision=fp32"]),
])
def test_the_runs_on_the_cpu_or_on_gpus(device, processes, expected, absent, monkeypatch, tmp_path):
    """On GPUs the runs keep the recipe's bf16, one process per GPU; the resume runs on the same kind of device."""
    launched = {}
    monkeypatch.setattr(rehearsal, "run_phase", lambda cmd, work, name, threads, timeout_s: launched.update(
        {name: (cmd, timeout_s)}))
    settings = rehearsal.Settings(device=device, processes=processes, timeout_s=60)
    rehearsal.sharded_run(tmp_path, settings)
    rehearsal.one_process_resume(tmp_path, settings)
    sharded, timeout = launched[f"fsdp_{processes}proc"]
    assert timeout == 60 and all(o in sharded for o in expected) and not any(o in sharded for o in absent)
    resume, _ = launched["resume_1proc"]
    assert f"hardware={device}" in resume and "torch.distributed.run" not in resume
    with pytest.raises(ValueError, match="cpu or cuda"):
        rehearsal.Settings(device="cuda:0")


@pytest.mark.slow
def test_a_run_over_its_time_limit_is_killed_and_reported(tmp_path):
    phase = measured_run.run_phase([sys.executable, "-c", "import time; time.sleep(60)"], tmp_path, "sleeper", 1,
                                   timeout_s=1)
    assert phase["returncode"] == "timeout" and phase["seconds"] < 30 and phase["peak_rss_mib"] == {}
