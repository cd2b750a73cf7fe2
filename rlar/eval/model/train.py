"""Train the evaluation classifier: cross-entropy on the train split with random shifts; accuracy."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from rlar.eval.model.classifier import DigitsClassifier
from rlar.runtime.build_checkpoint import BuildCheckpoint


def random_shift(images: torch.Tensor, max_shift: int, generator: torch.Generator) -> torch.Tensor:
    """Shift each image of ``[N, C, H, W]`` by a random whole number of pixels in [-max_shift, max_shift] along
    each axis, repeating the border pixels into the gap."""
    if max_shift == 0:
        return images
    n, _, h, w = images.shape
    pixels = torch.randint(-max_shift, max_shift + 1, (n, 2), generator=generator).float()  # [N, 2] (x, y)
    theta = torch.zeros(n, 2, 3)
    theta[:, 0, 0] = theta[:, 1, 1] = 1.0
    theta[:, :, 2] = -2 * pixels / torch.tensor([w, h])  # whole-pixel steps in normalized coordinates
    grid = F.affine_grid(theta, list(images.shape), align_corners=False)
    return F.grid_sample(images, grid, mode="nearest", padding_mode="border", align_corners=False)


def train_classifier(model: DigitsClassifier, images: torch.Tensor, labels: torch.Tensor, steps: int, lr: float,
                     batch_size: int, max_shift: int, generator: torch.Generator, progress=None,
                     checkpoint: BuildCheckpoint | None = None) -> DigitsClassifier:
    """Adam on the cross-entropy of random batches of ``images [N, C, H, W]`` / ``labels [N]``, each shifted.
    ``checkpoint`` (a cache build's) saves the state when a stop signal comes, and resumes from it."""
    checkpoint = checkpoint or BuildCheckpoint()
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    model.train()
    state = {"model": model, "optimizer": opt, "generator": generator}
    for step in range(checkpoint.resume(state, progress), steps):
        idx = torch.randint(len(images), (batch_size,), generator=generator)
        loss = F.cross_entropy(model(random_shift(images[idx], max_shift, generator)), labels[idx])
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        if progress is not None:
            progress.update(1)
            progress.set_postfix(loss=f"{loss.item():.4f}")
        checkpoint.step_done(step + 1, steps, state)
    return model.eval()


@torch.no_grad()
def accuracy(model: DigitsClassifier, images: torch.Tensor, labels: torch.Tensor, chunk_size: int = 512) -> float:
    """The fraction of ``images`` whose argmax class is their label."""
    hits = sum(int((model(x).argmax(1) == y).sum()) for x, y in zip(images.split(chunk_size),
                                                                    labels.split(chunk_size), strict=True))
    return hits / len(labels)
