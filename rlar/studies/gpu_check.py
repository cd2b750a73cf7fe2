"""``make gpu-check``: the CUDA paths on one GPU, in a few minutes, as one JSON and a printed table.

1. The embedded default for ``--iterations`` iterations on ``hardware=cuda`` in fp32 and bf16, with
   ``hardware.compile``, with ``hardware.compile_decode``, and under
   ``torchrun --nproc_per_node=1`` with ``hardware=ddp`` and ``hardware=fsdp``: exit code, seconds, mean seconds
   per loop phase, peak memory.
2. KV-cached decoding of LlamaGen GPT-B and GPT-L (random weights, 16,384 codes, 256 tokens, batch ``--batch``,
   bf16 autocast as ``hardware=cuda`` runs it), eager and with the compiled decode: tokens/s,
   peak memory, and the fraction of the device's memory bandwidth a step reaches (``rlar/studies/decode_roofline.py``).
3. The LlamaGen recipe as ``make rehearsal`` runs it (GPT-B, random weights, 256 px, full-width VQ-16, the VA-pi
   reward, ``data=hf_disk``) in bf16 on the GPU: one FSDP2 process saving a sharded checkpoint, then a resume with
   ``hardware=cuda`` (``--skip-recipe`` leaves it out).

Without a GPU it says so and exits 0.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

import torch

from rlar.loop import DEVIATIONS
from rlar.policy.llamagen import LlamaGen
from rlar.runtime.hardware import Hardware
from rlar.studies import rehearsal
from rlar.studies.decode_roofline import device_bandwidth, measure_decode
from rlar.studies.measured_run import run_phase
from rlar.studies.report import read_scalars

DECODE_SIZES = ("GPT-B", "GPT-L")
CODEBOOK_SIZE, TOKENS, CLASSES = 16384, 256, 1000  # LlamaGen c2i at 256 px (VQ-16)
RUN_TIMEOUT_S = 150


def default_runs() -> dict[str, tuple[int, list[str]]]:
    """``name -> (processes under torchrun, 0 = plain python; hardware overrides)``."""
    runs = {"cuda_fp32": (0, ["hardware=cuda", "hardware.precision=fp32"]),
            "cuda_bf16": (0, ["hardware=cuda"]),
            "cuda_bf16_compile": (0, ["hardware=cuda", "hardware.compile=true"]),
            "cuda_bf16_compile_decode": (0, ["hardware=cuda", "hardware.compile_decode=true"]),
            "ddp_1proc": (1, ["hardware=ddp"]),
            "fsdp_1proc": (1, ["hardware=fsdp"])}
    return runs


def first_error(log: str, length: int = 3000) -> str | None:
    """The log from its first traceback (or Hydra's "Error executing job"), where the cause is: under torchrun the
    log ends with the launcher's own report, which names no cause."""
    starts = [i for i in (log.find("Traceback (most recent call last)"), log.find("Error executing job")) if i >= 0]
    return log[min(starts):][:length] if starts else None


def run_default(name: str, nproc: int, hardware: list[str], out: Path, iterations: int) -> dict:
    """One short run of the embedded default (quickly trained tokenizer and prior, shared through ``out/cache``)."""
    run_dir = out / "runs" / name
    args = [*hardware, f"train.iterations={iterations}", f"cache_dir={out / 'cache'}", "tokenizer.train.steps=100",
            "policy.pretrain.steps=100", "eval.max_items=64", "eval.classifier_model.train.steps=50",
            "logger.image_every=0", "resume=false", f"hydra.run.dir={run_dir}"]
    launcher = ["-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}"] if nproc else []
    cmd = [sys.executable, *launcher, "-m", "rlar.studies.measured_run", *args]
    phase = run_phase(cmd, out, name, os.cpu_count() or 1, RUN_TIMEOUT_S)
    summary = run_dir / "summary.json"
    return check_row(phase, json.loads(summary.read_text())["timings"] if summary.is_file() else {}) | {
        "ratio": ratio_checks(run_dir)}


def ratio_checks(run_dir: Path) -> dict[str, float]:
    """The largest value over the run's iterations of each of :data:`rlar.loop.DEVIATIONS` it logged ({} before any):
    the first ratio's distance from 1 (bf16 recomputes the old log-probs: 0), and the bf16 sampler's log-probs
    against the update's pass."""
    if not (run_dir / "tensorboard").is_dir():
        return {}
    return {tag: max(values.values()) for tag, values in read_scalars(run_dir, DEVIATIONS).items() if values}


def recipe_check(out: Path) -> dict:
    """The LlamaGen recipe as ``make rehearsal`` runs it (GPT-B, random weights, 256 px, the VA-pi reward, hf_disk
    data) on this GPU with the full-width VQ-16: one FSDP2 process saving a sharded checkpoint, then a resume with
    ``hardware=cuda``; a row per phase."""
    settings = rehearsal.Settings(device="cuda", processes=1, tokenizer_ch=128, timeout_s=RUN_TIMEOUT_S)
    phases = rehearsal.rehearse(out / "rehearsal", settings)["phases"]
    return {name: check_row(phase, (phase["summary"] or {}).get("timings", {}))
            for name, phase in phases.items() if "returncode" in phase}


def check_row(phase: dict, timings: dict) -> dict:
    """A launch's row of the check (``phase``: what :func:`run_phase` returns): exit code, seconds, the first
    traceback of its whole log, its log tail, the largest peak memory of its processes, and the run's mean seconds
    per loop phase (``timings``; empty when it did not finish)."""
    row = {"returncode": phase["returncode"], "seconds": phase["seconds"], "timings": timings,
           "first_error": first_error(Path(phase["log"]).read_text()), "log_tail": phase["log_tail"][-2000:]}
    row |= {peak: max(phase[peak].values()) for peak in ("peak_rss_mib", "peak_cuda_mib") if phase.get(peak)}
    return row


def all_runs(result: dict) -> dict:
    """The default's runs and the recipe's phases (``llamagen_recipe/<phase>``), each a :func:`check_row`."""
    return {**result["runs"], **{f"llamagen_recipe/{name}": r for name, r in result.get("recipe", {}).items()}}


def decode_checks(sizes, batch: int, bandwidth: float | None):
    """Eager (and compiled-decode) sampling of each LlamaGen size, as ``hardware=cuda`` prepares the policy: yields
    ``(name, result)`` as each finishes, so that a caller keeps what was measured if a later one dies."""
    variants = {"eager": {}, "compile_decode": {"compile_decode": True}}
    for size in sizes:
        for variant, extra in variants.items():
            policy = None
            try:
                hw = Hardware(device="cuda", precision="bf16", tf32=True, **extra)
                hw.setup()
                torch.manual_seed(0)
                policy = LlamaGen(CODEBOOK_SIZE, TOKENS, CLASSES, size=size).to(hw.torch_device).eval()
                torch.nn.init.normal_(policy.output.weight, std=0.02)  # zero-initialized: every logit would be equal
                policy = hw.prepare(policy, trainable=False)
                result = measure_decode(policy, batch, hw.autocast, bandwidth, weight_bytes=2)
            except Exception as e:  # out of memory, a compile error: reported with the other results, not fatal
                result = {"error": f"{type(e).__name__}: {e}"[:2000]}
            del policy
            torch.cuda.empty_cache()
            yield f"{size}/{variant}", result


def table(result: dict) -> str:
    lines = [f"GPU check on {result['device']} ({result['bandwidth_gbs'] or 'unknown'} GB/s peak bandwidth)", "",
             f"{'run':<26} {'exit':>7} {'seconds':>8} {'s/iter':>7} {'peak GPU MiB':>13} {'max|r-1|':>9} "
             f"{'sampler dev':>11}"]
    for name, r in all_runs(result).items():
        per_iter = sum(r.get("timings", {}).values())
        ratio = r.get("ratio", {})
        lines.append(f"{name:<26} {r['returncode']!s:>7} {r['seconds']:>8.1f} {per_iter:>7.3f} "
                     f"{r.get('peak_cuda_mib', float('nan')):>13.0f} "
                     f"{ratio.get('policy/ratio_max_abs_dev', float('nan')):>9.2g} "
                     f"{ratio.get('policy/sampler_logprob_dev', float('nan')):>11.2g}")
    lines += ["", f"{'decode (batch ' + str(result['batch']) + ', 256 tokens)':<30} {'tokens/s':>10} "
              f"{'ms/step':>8} {'peak GiB':>9} {'MB/step':>8} {'of bandwidth':>13}"]
    for name, r in result["decode"].items():
        if "error" in r:
            lines.append(f"{name:<30} failed: {r['error'][:200]}")
            continue
        fraction = "n/a" if r["bandwidth_fraction"] is None else f"{100 * r['bandwidth_fraction']:.1f}%"
        lines.append(f"{name:<30} {r['tokens_per_s']:>10.0f} {r['step_ms']:>8.2f} {r['peak_mem_gib']:>9.2f} "
                     f"{r['bytes_per_step'] / 1e6:>8.1f} {fraction:>13}")
    return "\n".join(lines)


def parse_args(argv):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=Path("outputs/gpu_check"), help="runs and gpu_check.json")
    parser.add_argument("--iterations", type=int, default=20, help="iterations of each run of the default")
    parser.add_argument("--batch", type=int, default=64, help="sequences decoded at once")
    parser.add_argument("--sizes", nargs="+", default=list(DECODE_SIZES), help="LlamaGen sizes to decode with")
    parser.add_argument("--bandwidth-gbs", type=float, help="the device's peak memory bandwidth (GB/s), if not in "
                        "rlar/studies/decode_roofline.py's table")
    parser.add_argument("--skip-runs", action="store_true", help="no runs of the default")
    parser.add_argument("--skip-recipe", action="store_true", help="no run of the LlamaGen recipe (the rehearsal)")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if not torch.cuda.is_available():
        print("gpu-check: no CUDA GPU on this machine (torch.cuda.is_available() is False); nothing to check")
        return 0
    out = args.out.absolute()
    out.mkdir(parents=True, exist_ok=True)
    device = torch.cuda.get_device_name()
    bandwidth = device_bandwidth(device, args.bandwidth_gbs)
    result = {"device": device, "bandwidth_gbs": bandwidth and bandwidth / 1e9, "batch": args.batch,
              "runs": {}, "decode": {}}
    if not args.skip_runs:
        for name, (nproc, hardware) in default_runs().items():
            result["runs"][name] = run_default(name, nproc, hardware, out, args.iterations)
            (out / "gpu_check.json").write_text(json.dumps(result, indent=2))  # kept if a later part dies
    for name, measured in decode_checks(args.sizes, args.batch, bandwidth):
        result["decode"][name] = measured
        (out / "gpu_check.json").write_text(json.dumps(result, indent=2))
    if not args.skip_recipe:
        result["recipe"] = recipe_check(out)
        (out / "gpu_check.json").write_text(json.dumps(result, indent=2))
    print(table(result))
    print(f"written: {out / 'gpu_check.json'}")
    failed = {name: r["first_error"] or r["log_tail"] for name, r in all_runs(result).items() if r["returncode"] != 0}
    failed |= {name: r["error"] for name, r in result["decode"].items() if "error" in r}
    for name, details in failed.items():
        print(f"\n{name} failed:\n{details}", file=sys.stderr)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
