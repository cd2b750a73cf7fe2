"""Peak resident memory of ``data=image_folder`` as the folder grows: build the data, draw a few batches.

    python -m rlar.data.memory_bench /tmp/rlar-folders 10000 100000

writes ``<dir>/<count>/c<k>/<i>.png`` (16x16 RGB noise, once per count) and measures each count in a fresh process
(``resource.getrusage``: the process's peak RSS and, with ``--num-workers``, its largest child's: a forked worker
starts with its parent's pages).
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
from pathlib import Path

import numpy as np
from PIL import Image

CLASSES = 10


def write_folder(root: Path, count: int, size: int = 16) -> Path:
    """``root/c<k>/<i>.png``: ``count`` random ``size``x``size`` RGB PNGs over 10 classes; skipped when complete."""
    done = root / ".complete"
    if done.exists():
        return root
    rng = np.random.default_rng(0)
    for k in range(CLASSES):
        (root / f"c{k}").mkdir(parents=True, exist_ok=True)
    for i in range(count):
        pixels = rng.integers(0, 256, (size, size, 3), dtype=np.uint8)
        Image.fromarray(pixels).save(root / f"c{i % CLASSES}" / f"{i:06d}.png")
    done.touch()
    return root


def measure(root: str, image_size: int, batches: int, batch_size: int, num_workers: int) -> dict:
    """Build the data and draw ``batches`` batches in this process: its peak RSS and its workers' (MiB)."""
    import torch

    from rlar.data.image_folder import ImageFolderData

    data = ImageFolderData(root, image_size=image_size, channels=3, num_workers=num_workers)
    stream = data.batches(batch_size, torch.Generator().manual_seed(0))
    for _ in range(batches):
        images, _, _ = next(stream)
        assert images.shape == (batch_size, 3, image_size, image_size)
    stream.close()
    kib = 1024  # ru_maxrss is in KiB on Linux
    return {"images": len(data.train_labels) + len(data.eval_labels),
            "peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / kib,
            "workers_peak_rss_mib": resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / kib}


def measure_in_subprocess(root: Path, image_size: int = 32, batches: int = 20, batch_size: int = 64,
                          num_workers: int = 0) -> dict:
    """:func:`measure` in a fresh Python process (so earlier work does not count)."""
    args = [sys.executable, "-m", "rlar.data.memory_bench", "--measure", str(root), "--image-size", str(image_size),
            "--batches", str(batches), "--batch-size", str(batch_size), "--num-workers", str(num_workers)]
    out = subprocess.run(args, check=True, capture_output=True, text=True).stdout
    return json.loads(out.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("dir", help="where the folders are written (keep it out of the repository)")
    parser.add_argument("counts", nargs="*", type=int, default=[10_000, 100_000])
    parser.add_argument("--measure", action="store_true", help="measure the folder `dir` in this process")
    parser.add_argument("--image-size", type=int, default=32)
    parser.add_argument("--batches", type=int, default=20)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--num-workers", type=int, default=0)
    a = parser.parse_args()
    if a.measure:
        print(json.dumps(measure(a.dir, a.image_size, a.batches, a.batch_size, a.num_workers)))
        return
    print(f"image_size {a.image_size}, {a.batches} batches of {a.batch_size}, num_workers {a.num_workers}")
    for count in a.counts:
        root = write_folder(Path(a.dir) / str(count), count)
        r = measure_in_subprocess(root, a.image_size, a.batches, a.batch_size, a.num_workers)
        workers = f"  largest worker {r['workers_peak_rss_mib']:6.0f} MiB" if a.num_workers else ""
        print(f"{r['images']:>8} images  peak RSS {r['peak_rss_mib']:6.0f} MiB{workers}", flush=True)


if __name__ == "__main__":
    main()
