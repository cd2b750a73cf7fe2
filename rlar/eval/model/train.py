"""Train the evaluation classifier: cross-entropy on the train split with random shifts; accuracy."""

from __future__ import annotations

from collections.abc import Callable, Iterable

import torch
import torch.nn.functional as F

from rlar.data.batches import ImageData
from rlar.eval.model.classifier import DigitsClassifier
from rlar.runtime.build_checkpoint import BuildCheckpoint

ReadBatches = Callable[[list[torch.Tensor]], Iterable[torch.Tensor]]  # index batches [B] -> images [B, C, H, W]


def random_pixels(n: int, max_shift: int, generator: torch.Generator) -> torch.Tensor:
    """``[n, 2]`` (x, y): a random whole number of pixels in [-max_shift, max_shift] per image and axis."""
    return torch.randint(-max_shift, max_shift + 1, (n, 2), generator=generator).float()


def shift(images: torch.Tensor, pixels: torch.Tensor) -> torch.Tensor:
    """Each image of ``[N, C, H, W]`` shifted by its ``pixels [N, 2]`` (x, y), the border pixels repeated into the
    gap."""
    n, _, h, w = images.shape
    theta = torch.zeros(n, 2, 3)
    theta[:, 0, 0] = theta[:, 1, 1] = 1.0
    theta[:, :, 2] = -2 * pixels / torch.tensor([w, h])  # whole-pixel steps in normalized coordinates
    grid = F.affine_grid(theta, list(images.shape), align_corners=False)
    return F.grid_sample(images, grid, mode="nearest", padding_mode="border", align_corners=False)


def draw_step(n: int, batch_size: int, max_shift: int, generator: torch.Generator
              ) -> tuple[torch.Tensor, torch.Tensor | None]:
    """One training step's draws from ``generator``, in this order: the batch's items ``[B]`` of ``n``, then their
    shifts ``[B, 2]`` (None when ``max_shift`` is 0)."""
    idx = torch.randint(n, (batch_size,), generator=generator)
    return idx, random_pixels(batch_size, max_shift, generator) if max_shift else None


def batches_ahead(read_batches: ReadBatches, n: int, steps: int, batch_size: int, max_shift: int,
                  generator: torch.Generator) -> Iterable[torch.Tensor]:
    """The images of the next ``steps`` steps' batches, read by ``read_batches`` (which may read ahead, e.g. in
    DataLoader workers); their items drawn as :func:`draw_step` will draw them, from a copy of ``generator``."""
    ahead = torch.Generator().set_state(generator.get_state())
    return read_batches([draw_step(n, batch_size, max_shift, ahead)[0] for _ in range(steps)])


def train_classifier(model: DigitsClassifier, read_batches: ReadBatches, labels: torch.Tensor, steps: int,
                     lr: float, batch_size: int, max_shift: int, generator: torch.Generator, progress=None,
                     checkpoint: BuildCheckpoint | None = None) -> DigitsClassifier:
    """Adam on the cross-entropy of random batches of a train split of ``labels [N]``, each image shifted; only the
    batches' images are read, by ``read_batches`` (an ``ImageData``'s ``train_batches``). ``checkpoint`` (a cache
    build's) saves the state when a stop signal comes, and resumes from it."""
    checkpoint = checkpoint or BuildCheckpoint()
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    model.train()
    state = {"model": model, "optimizer": opt, "generator": generator}
    start = checkpoint.resume(state, progress)
    batches = batches_ahead(read_batches, len(labels), steps - start, batch_size, max_shift, generator)
    for step, images in zip(range(start, steps), batches, strict=True):
        idx, pixels = draw_step(len(labels), batch_size, max_shift, generator)  # [B], [B, 2] or None
        loss = F.cross_entropy(model(images if pixels is None else shift(images, pixels)), labels[idx])
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        if progress is not None:
            progress.update(1)
            progress.set_postfix(loss=f"{loss.item():.4f}")
        checkpoint.step_done(step + 1, steps, state)
    return model.eval()


@torch.no_grad()
def accuracy(model: DigitsClassifier, data: ImageData, chunk_size: int = 512) -> float:
    """The fraction of ``data``'s eval images whose argmax class is their label, ``chunk_size`` images converted to
    floats at a time."""
    labels = data.eval_labels
    hits = sum(int((model(data.eval_images_of(slice(lo, lo + chunk_size))).argmax(1) == y).sum())
               for lo, y in zip(range(0, len(labels), chunk_size), labels.split(chunk_size), strict=True))
    return hits / len(labels)
