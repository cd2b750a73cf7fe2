"""The GPU check's arithmetic (bytes a decoding step reads, against the device's bandwidth) and its no-GPU path."""

import json

import pytest
import torch

from rlar.policy.llamagen import LlamaGen
from rlar.studies import gpu_check
from rlar.studies.decode_roofline import (
    bandwidth_fraction,
    decode_bytes_per_step,
    device_bandwidth,
    params_read_per_step,
)


def test_params_read_per_step_leave_out_the_embedding_tables():
    model = LlamaGen(16, 16, 3, n_layer=2, n_head=2, dim=32, multiple_of=32)  # SwiGLU hidden: 96
    per_layer = 3 * 32 * 32 + 32 * 32 + 3 * 96 * 32 + 2 * 32  # wqkv, wo, w1/w3/w2, the two norms = 13,376
    assert params_read_per_step(model) == 2 * per_layer + 32 + 16 * 32 == 27_296  # + final norm, output


def test_bytes_per_step_and_bandwidth_fraction_by_hand():
    # weights: 27,296 bf16 = 54,592 B; keys+values per position: 2 x 2 layers x 4 rows x 32 channels x 4 B = 2,048 B,
    # over (16 + 1) / 2 = 8.5 positions on average = 17,408 B
    moved = decode_bytes_per_step(27_296, weight_bytes=2, n_layer=2, width=32, rows=4, seq_len=16, cache_bytes=4)
    assert moved == 72_000
    assert bandwidth_fraction(moved, step_s=1e-6, bandwidth=1.44e11) == pytest.approx(0.5)
    assert bandwidth_fraction(moved, step_s=1e-6, bandwidth=None) is None


@pytest.mark.parametrize("name,expected", [("NVIDIA H200", 4.8e12), ("NVIDIA H100 80GB HBM3", 3.35e12),
                                           ("NVIDIA H100 PCIe", 2.0e12), ("NVIDIA A100-SXM4-80GB", 2.039e12),
                                           ("NVIDIA A100-SXM4-40GB", 1.555e12), ("Some Future GPU", None)])
def test_bandwidth_by_device_name(name, expected):
    assert device_bandwidth(name) == expected


def test_bandwidth_override_wins():
    assert device_bandwidth("NVIDIA H200", override_gbs=1000.0) == 1e12
    assert device_bandwidth("Some Future GPU", override_gbs=500.0) == 5e11


def test_without_a_gpu_it_says_so_and_exits_0(monkeypatch, capsys, tmp_path):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert gpu_check.main(["--out", str(tmp_path / "out")]) == 0
    assert "no CUDA GPU on this machine" in capsys.readouterr().out
    assert not (tmp_path / "out").exists()


def test_with_a_gpu_it_writes_one_json_and_a_table(monkeypatch, capsys, tmp_path):
    """The orchestration, with the runs and the decoding measured by stand-ins (no GPU here)."""
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda: "NVIDIA H200")
    runs = []

    def fake_run(name, nproc, hardware, out, iterations):
        runs.append((name, nproc, iterations))
        failed = name == "fsdp_1proc"
        return {"returncode": int(failed), "seconds": 30.0, "log_tail": "ChildFailedError",
                "first_error": "Traceback (most recent call last):\nboom" if failed else None,
                "timings": {"time/rollout": 0.1, "time/update": 0.2}, "peak_cuda_mib": 900.0,
                **({} if failed else {"ratio": {"policy/ratio_max_abs_dev": 0.0,
                                                "policy/sampler_logprob_dev": 0.0123}})}

    def fake_decode(sizes, batch, bandwidth):
        assert bandwidth == 4.8e12
        measured = {"tokens_per_s": 1e4, "step_ms": 6.4, "peak_mem_gib": 2.0, "bytes_per_step": 3e8,
                    "bandwidth_fraction": 0.25}
        yield f"{sizes[0]}/eager", measured
        written = json.loads((tmp_path / "gpu_check.json").read_text())
        assert written["decode"] == {f"{sizes[0]}/eager": measured}  # on disk before the next one starts
        yield "GPT-L/eager", {"error": "OutOfMemoryError: CUDA out of memory"}

    def fake_recipe(out):
        return {"fsdp_1proc": {"returncode": 0, "seconds": 40.0, "peak_cuda_mib": 5000.0, "first_error": None,
                               "timings": {"time/rollout": 1.0}, "log_tail": ""},
                "resume_1proc": {"returncode": "timeout", "seconds": 150.0, "peak_cuda_mib": float("nan"),
                                 "first_error": None, "timings": {}, "log_tail": "still sampling"}}

    monkeypatch.setattr(gpu_check, "run_default", fake_run)
    monkeypatch.setattr(gpu_check, "decode_checks", fake_decode)
    monkeypatch.setattr(gpu_check, "recipe_check", fake_recipe)
    assert gpu_check.main(["--out", str(tmp_path), "--iterations", "3", "--sizes", "GPT-B"]) == 1  # fsdp failed
    assert [r[0] for r in runs][:3] == ["cuda_fp32", "cuda_bf16", "cuda_bf16_compile"]
    assert ("ddp_1proc", 1, 3) in runs and ("fsdp_1proc", 1, 3) in runs
    out = capsys.readouterr()
    assert "GPT-B/eager" in out.out and "25.0%" in out.out
    assert " 0.012" in next(line for line in out.out.splitlines() if line.startswith("cuda_bf16 "))
    assert "fsdp_1proc failed:\nTraceback (most recent call last):\nboom" in out.err  # the cause, not the tail
    assert "GPT-L/eager" in out.out and "GPT-L/eager failed:\nOutOfMemoryError" in out.err
    assert "llamagen_recipe/fsdp_1proc" in out.out and "llamagen_recipe/resume_1proc failed:\nstill sampling" in out.err
    written = json.loads((tmp_path / "gpu_check.json").read_text())
    assert written["bandwidth_gbs"] == 4800 and written["runs"]["cuda_bf16"]["timings"]["time/update"] == 0.2
    assert written["recipe"]["fsdp_1proc"]["peak_cuda_mib"] == 5000.0


def test_first_error_finds_the_cause_before_torchruns_report():
    log = ("rank 0 starts\nError executing job with overrides: ['hardware=ddp']\nTraceback (most recent call last):\n"
           "  File \"rlar/build.py\"\nRuntimeError: Expected all tensors to be on the same device\n"
           + "progress\n" * 500 + "torch.distributed.elastic.multiprocessing.errors.ChildFailedError:\n")
    error = gpu_check.first_error(log)
    assert error.startswith("Error executing job") and "same device" in error and len(error) == 3000
    assert "same device" not in log[-2000:]  # the tail alone misses it
    assert gpu_check.first_error("all went well") is None


def test_a_row_holds_the_first_error_of_the_whole_log_and_the_largest_peaks(tmp_path):
    log = tmp_path / "run.log"
    log.write_text("Traceback (most recent call last):\nValueError: the cause\n" + "launcher report\n" * 1000)
    phase = {"returncode": 1, "seconds": 3.0, "log": str(log), "log_tail": log.read_text()[-3000:],
             "peak_rss_mib": {"rank0": 900.0, "rank1": 950.0}, "peak_cuda_mib": {"rank0": 70.0}}
    row = gpu_check.check_row(phase, {"time/rollout": 0.5})
    assert "the cause" in row["first_error"] and "the cause" not in phase["log_tail"]
    assert (row["peak_rss_mib"], row["peak_cuda_mib"], row["timings"]) == (950.0, 70.0, {"time/rollout": 0.5})
    assert "peak_cuda_mib" not in gpu_check.check_row({**phase, "peak_cuda_mib": {}}, {})  # no GPU used


def test_a_run_s_ratio_checks_are_the_largest_logged_values(tmp_path):
    from torch.utils.tensorboard import SummaryWriter

    assert gpu_check.ratio_checks(tmp_path) == {}  # the run died before its first iteration
    with SummaryWriter(tmp_path / "tensorboard") as writer:
        for step, (ratio, sampler) in enumerate([(0.0, 0.011), (0.0, 0.017), (0.0, 0.009)]):
            writer.add_scalar("policy/ratio_max_abs_dev", ratio, step)
            writer.add_scalar("policy/sampler_logprob_dev", sampler, step)
    checks = gpu_check.ratio_checks(tmp_path)
    assert checks["policy/ratio_max_abs_dev"] == 0.0
    assert checks["policy/sampler_logprob_dev"] == pytest.approx(0.017)
