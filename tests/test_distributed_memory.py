"""FSDP2's memory options with 2 CPU processes (torchrun, gloo): bf16 mixed precision, one all-gather per unit per
rollout, and a short run with every memory option on (docs/distributed.md, memory)."""

import json
from pathlib import Path

import pytest
from torchrun import torchrun

WORKER = Path(__file__).with_name("torchrun_fsdp_memory.py")


@pytest.fixture(scope="module")
def fsdp_facts(tmp_path_factory):
    out = tmp_path_factory.mktemp("fsdp_memory") / "facts.json"
    torchrun([str(WORKER), str(out)], cwd=out.parent, env={"PYTHONPATH": str(WORKER.parent.parent)})
    return json.loads(out.read_text())


@pytest.mark.slow
def test_fsdp_bf16_gathers_in_bf16_and_reduces_in_fp32(fsdp_facts):
    assert fsdp_facts["block_weight_dtypes_in_forward"] == ["torch.bfloat16"]
    assert fsdp_facts["train_all_gather_dtypes"] == ["torch.bfloat16"]
    assert fsdp_facts["train_reduce_scatter_dtypes"] == ["torch.float32"]
    assert fsdp_facts["sharded_grad_dtypes"] == ["torch.float32"]  # the optimizer steps fp32 weights


@pytest.mark.slow
def test_a_rollout_gathers_each_unit_once_not_once_per_token(fsdp_facts):
    f = fsdp_facts
    assert f["per_rollout_gathers"] == f["units"]  # 3 blocks and the root, once each, for 16 tokens
    assert f["per_token_gathers"] == f["blocks"] * f["tokens"]  # without it: every block at every token
    assert f["same_tokens"] and f["resharded_after_rollout"]


@pytest.mark.slow
def test_an_fsdp_bf16_run_with_every_memory_option(tiny, tmp_path):
    options = ["hardware=fsdp", "hardware.device=cpu", "hardware.precision=bf16", "rollout.micro_batch_size=4",
               "policy.grad_checkpointing=true", "algorithm.beta=0.1", "train.ref_on_cpu=true"]
    torchrun(["-m", "rlar.run", *tiny, *options, f"hydra.run.dir={tmp_path}"], cwd=tmp_path,
             env={"PYTHONPATH": str(WORKER.parent.parent)})
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert summary["strategy"] == "fsdp" and summary["world_size"] == 2 and summary["iterations"] == 2
    assert all(h["eval/reward"] == h["eval/reward"] for h in summary["history"])  # finite, not NaN
