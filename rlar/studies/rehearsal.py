"""``make rehearsal``: the VA-pi LlamaGen recipe (``experiment=vapi_llamagen_xxl``) rehearsed on the CPU.

With ``policy.size=GPT-B`` at 256 px and random weights, it runs every step the recipe takes on GPUs:

1. a synthetic 256 px image set: PNG files in class folders and a ``save_to_disk`` dataset of their paths and
   labels (the recipe's ``data=hf_disk``, with ImageNet's 1,000 class ids);
2. random checkpoints in the released layouts the recipe loads strictly: LlamaGen c2i (``{"model": ...}`` plus
   ``train_c2i.py``'s ``args``) and LlamaGen's VQ-16 (narrowed by ``tokenizer.ch``, same key names). Their layouts
   are checked against the released files in ``tests/test_llamagen.py`` and ``tests/test_tokenizer_zoo.py``;
3. ``torchrun --nproc_per_node=2`` with FSDP2 on the CPU for a few iterations, saving a sharded checkpoint;
4. a resume of that run in one process, one iteration further (DCP reshards 2 -> 1).

``--device cuda`` runs the same on GPUs in the recipe's bf16 (``--processes``: at most one per GPU; ``make
gpu-check`` runs it with one, and the full-width VQ-16).

It prints each phase's seconds, each process's peak resident memory and the runs' mean seconds per loop phase,
and writes them to ``<work>/rehearsal.json``. Options that other work adds (``hardware.compile_decode``, a
rollout micro-batch) are tried with ``--set key=value``, or made the rehearsal's default by one more entry in
:func:`recipe_overrides`.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
from datasets import Dataset
from PIL import Image

from rlar.policy.llamagen import LlamaGen
from rlar.runtime.atomic_files import atomic_write_text
from rlar.runtime.checkpoint import shards_of
from rlar.studies.measured_run import run_phase
from rlar.tokenizer.llamagen_vq import LlamaGenVQ

CODEBOOK_SIZE = 16384  # LlamaGen's VQ-16 codes, the c2i models' vocabulary
NUM_CLASSES = 1000  # the recipe's data.num_classes (ImageNet's ids)
DOWNSAMPLING = 16  # VQ-16
FRESH = ("images", "dataset", "cache", "run", "measures")  # what a rehearsal makes under its working directory


@dataclass
class Settings:
    size: str = "GPT-B"
    image_size: int = 256
    classes: int = 2
    images_per_class: int = 16
    tokenizer_ch: int = 32  # LlamaGen's is 128; narrower keeps the CPU decode short, with the same key names
    batch_size: int = 4  # global: 2 items per process
    generations: int = 2  # G
    iterations: int = 2  # the 2-process run; the resume runs one more
    eval_items: int = 2
    workers: int = 1  # DataLoader workers decoding the images (the recipe uses 8)
    device: str = "cpu"  # cpu (fp32, gloo) or cuda (the recipe's bf16, NCCL; at most one process per GPU)
    processes: int = 2  # the sharded run's torchrun processes; the resume runs in one
    timeout_s: int = 0  # each run's time limit in seconds (0: none)
    extra: list[str] = field(default_factory=list)  # more overrides for both runs (--set key=value)

    def __post_init__(self):
        if self.device not in ("cpu", "cuda"):
            raise ValueError(f"the rehearsal's device must be cpu or cuda (each process takes cuda:LOCAL_RANK), got "
                             f"{self.device!r}")


def write_images(root: Path, s: Settings) -> tuple[list[str], list[int]]:
    """``root/class_<id>/<n>.png``: per class, one hue and stripe frequency, with noise; returns paths and labels.
    Labels are spread over ImageNet's 1,000 ids, as a subset's are."""
    g = torch.Generator().manual_seed(0)
    ramp = torch.linspace(0, 1, s.image_size)
    paths, labels = [], []
    for c in range(s.classes):
        label = c * (NUM_CLASSES // s.classes)
        folder = root / f"class_{label:03d}"
        folder.mkdir(parents=True, exist_ok=True)
        colour = torch.rand(3, 1, 1, generator=g)
        stripes = 0.5 + 0.5 * torch.sin(2 * torch.pi * (c + 2) * (ramp[:, None] + ramp[None]))  # [S, S]
        for n in range(s.images_per_class):
            image = (colour * stripes + 0.2 * torch.rand(3, s.image_size, s.image_size, generator=g)).clamp(0, 1)
            path = folder / f"{n:03d}.png"
            Image.fromarray((image * 255).byte().permute(1, 2, 0).numpy()).save(path)
            paths.append(str(path))
            labels.append(label)
    return paths, labels


def write_dataset(path: Path, paths: list[str], labels: list[int]) -> None:
    """The recipe's ``data=hf_disk`` input: a ``save_to_disk`` dataset of ``image_path`` and ``label`` columns."""
    Dataset.from_dict({"image_path": paths, "label": labels}).save_to_disk(str(path))


def write_policy_checkpoint(path: Path, s: Settings) -> int:
    """A random LlamaGen c2i checkpoint as ``train_c2i.py`` saves it; returns its parameter count."""
    torch.manual_seed(0)
    grid = s.image_size // DOWNSAMPLING
    model = LlamaGen(CODEBOOK_SIZE, grid * grid, NUM_CLASSES, size=s.size)
    torch.nn.init.normal_(model.output.weight, std=0.02)  # LlamaGen zero-inits it: every logit would be equal
    torch.save({"model": model.state_dict(), "steps": 0, "args": argparse.Namespace(gpt_model=s.size)}, path)
    return sum(p.numel() for p in model.parameters())


def write_tokenizer_checkpoint(path: Path, s: Settings) -> int:
    """A random LlamaGen VQ-16 checkpoint (``{"model": ...}``) of width ``tokenizer_ch``; returns its parameter
    count."""
    torch.manual_seed(1)
    model = LlamaGenVQ(s.image_size, CODEBOOK_SIZE, ch=s.tokenizer_ch)
    torch.save({"model": model.state_dict()}, path)
    return sum(p.numel() for p in model.parameters())


def recipe_overrides(work: Path, s: Settings) -> list[str]:
    """The recipe at the rehearsal's size, on this machine's files, without the network (random LPIPS backbone): the
    sharded run takes one optimizer step per rollout, as the recipe does, on any number of processes (each
    accumulates its items' G-row minibatches); the one-process resume, with the same overrides, takes ``processes``."""
    return [
        "experiment=vapi_llamagen_xxl", f"policy.size={s.size}", f"policy.checkpoint={work / 'c2i.pt'}",
        f"tokenizer.checkpoint={work / 'vq_ds16_c2i.pt'}", f"tokenizer.image_size={s.image_size}",
        f"tokenizer.ch={s.tokenizer_ch}", f"data.path={work / 'dataset'}", f"data.image_size={s.image_size}",
        f"data.num_workers={s.workers}", "reward.components.lpips.pnet_rand=true",
        f"train.batch_size={s.batch_size}", f"algorithm.num_generations={s.generations}",
        f"algorithm.minibatch_size={s.generations}", f"algorithm.grad_accum={s.batch_size // s.processes}",
        f"eval.max_items={s.eval_items}", f"eval.batch_size={s.eval_items}", "eval.classifier_model.train.steps=20",
        "logger.image_every=1", f"cache_dir={work / 'cache'}", f"hydra.run.dir={work / 'run'}", *s.extra,
    ]


def on_device(s: Settings) -> list[str]:
    """The runs' device: the CPU in fp32, or GPUs in the recipe's own precision (bf16)."""
    return ["hardware.device=cpu", "hardware.precision=fp32"] if s.device == "cpu" else ["hardware.device=cuda"]


def sharded_run(work: Path, s: Settings) -> dict:
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={s.processes}", "-m",
           "rlar.studies.measured_run", *recipe_overrides(work, s), "hardware=fsdp", *on_device(s),
           f"train.iterations={s.iterations}", "train.checkpoint_format=sharded"]
    threads = max(1, (os.cpu_count() or 2) // s.processes)
    return run_phase(cmd, work, f"fsdp_{s.processes}proc", threads, s.timeout_s)


def one_process_resume(work: Path, s: Settings) -> dict:
    cmd = [sys.executable, "-m", "rlar.studies.measured_run", *recipe_overrides(work, s), f"hardware={s.device}",
           *on_device(s), f"train.iterations={s.iterations + 1}", "train.checkpoint_format=sharded"]
    return run_phase(cmd, work, "resume_1proc", os.cpu_count() or 1, s.timeout_s)


def checkpoint_state(checkpoints: Path) -> dict | None:
    """What a run left in ``checkpoints/``: the files of the shard folder ``last.pt`` names, and its format,
    iteration and keys (None: no ``last.pt``)."""
    record_path = checkpoints / "last.pt"
    if not record_path.is_file():
        return None
    record = torch.load(record_path, map_location="cpu", weights_only=True)
    shards = checkpoints / (shards_of(record) or "last_sharded")
    return {"format": record["format"], "iteration": record["iteration"], "keys": sorted(record),
            "shard_files": sorted(p.name for p in shards.iterdir()) if shards.is_dir() else []}


def rehearse(work: Path, s: Settings) -> dict:
    """Every phase in ``work``, from scratch; the result (also ``work/rehearsal.json``). Stops after a run that
    fails."""
    for made in FRESH:  # an earlier rehearsal's run would be resumed, not rehearsed
        shutil.rmtree(work / made, ignore_errors=True)
    work.mkdir(parents=True, exist_ok=True)
    result: dict = {"settings": asdict(s), "phases": {}}
    tic = time.perf_counter()
    paths, labels = write_images(work / "images", s)
    write_dataset(work / "dataset", paths, labels)
    result["phases"]["data"] = {"seconds": time.perf_counter() - tic, "images": len(paths)}
    tic = time.perf_counter()
    policy_params = write_policy_checkpoint(work / "c2i.pt", s)
    tokenizer_params = write_tokenizer_checkpoint(work / "vq_ds16_c2i.pt", s)
    result["phases"]["checkpoints"] = {"seconds": time.perf_counter() - tic, "policy_params": policy_params,
                                       "tokenizer_params": tokenizer_params}
    for name, phase in ((f"fsdp_{s.processes}proc", sharded_run), ("resume_1proc", one_process_resume)):
        result["phases"][name] = phase(work, s)
        summary = work / "run" / "summary.json"
        result["phases"][name]["summary"] = json.loads(summary.read_text()) if summary.is_file() else None
        result["phases"][name]["checkpoint"] = checkpoint_state(work / "run" / "checkpoints")
        if result["phases"][name]["returncode"]:
            break
    atomic_write_text(work / "rehearsal.json", json.dumps(result, indent=2))
    return result


def report(result: dict) -> str:
    """The phases' seconds and peak memory per process, and each run's mean seconds per loop phase."""
    lines = [f"{'phase':<14} {'exit':>4} {'seconds':>8}  peak RSS per process (MiB)"]
    for name, phase in result["phases"].items():
        peaks = ", ".join(f"{k} {v:.0f}" for k, v in phase.get("peak_rss_mib", {}).items())
        lines.append(f"{name:<14} {phase.get('returncode', 0):>4} {phase['seconds']:>8.1f}  {peaks}")
    for name, phase in result["phases"].items():
        if phase.get("summary"):
            split = ", ".join(f"{k[5:]} {v:.2f}" for k, v in phase["summary"]["timings"].items())
            lines.append(f"{name}: mean seconds per iteration: {split}")
    return "\n".join(lines)


def parse_args(argv: list[str] | None) -> tuple[Path | None, Settings]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--work", type=Path, default=Path("outputs/rehearsal"), help="working directory")
    for name, default in asdict(Settings()).items():
        if name != "extra":
            parser.add_argument(f"--{name.replace('_', '-')}", type=type(default), default=default)
    parser.add_argument("--set", dest="extra", action="append", default=[], metavar="KEY=VALUE",
                        help="one more override for both runs, e.g. --set hardware.compile_decode=true")
    args = vars(parser.parse_args(argv))
    work = args.pop("work")
    return work, Settings(**args)


def main(argv: list[str] | None = None) -> dict:
    work, settings = parse_args(argv)
    result = rehearse(work.absolute(), settings)
    print(report(result))
    print(f"outputs: {work} (rehearsal.json, run/, *.log)")
    failed = [name for name, phase in result["phases"].items() if phase.get("returncode")]
    if failed:
        print(result["phases"][failed[0]]["log_tail"], file=sys.stderr)
        sys.exit(f"rehearsal failed in {failed[0]}")
    return result


if __name__ == "__main__":
    main()
