"""A small VQ autoencoder that rlar trains on the embedded data: 32x32 images -> an 8x8 grid of codes."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from rlar.runtime.build_checkpoint import BuildCheckpoint


def _res_block(ch: int) -> nn.Module:
    return nn.Sequential(nn.SiLU(), nn.Conv2d(ch, ch, 3, padding=1), nn.SiLU(), nn.Conv2d(ch, ch, 1))


class Residual(nn.Module):
    def __init__(self, ch: int):
        super().__init__()
        self.body = _res_block(ch)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.body(x)


class DigitsVQ(nn.Module):
    """Patch encoder (downsample 4) -> nearest-code quantizer (squared L2) -> conv decoder with a tanh output."""

    def __init__(self, image_size: int = 32, channels: int = 1, codebook_size: int = 64, embed_dim: int = 16,
                 hidden: int = 64):
        super().__init__()
        if image_size % 4:
            raise ValueError(f"image_size must be a multiple of 4 (the downsampling factor), got {image_size}")
        self.codebook_size = codebook_size
        self.grid = (image_size // 4, image_size // 4)
        self.encoder = nn.Sequential(  # 4x4 patches -> one latent vector each; the work runs at the grid size
            nn.Conv2d(channels, hidden, 4, stride=4), nn.SiLU(),
            nn.Conv2d(hidden, hidden, 3, padding=1), Residual(hidden), nn.SiLU(),
            nn.Conv2d(hidden, embed_dim, 1),
        )
        self.codebook = nn.Embedding(codebook_size, embed_dim)
        nn.init.uniform_(self.codebook.weight, -1 / codebook_size, 1 / codebook_size)
        self.decoder = nn.Sequential(
            nn.Conv2d(embed_dim, hidden, 3, padding=1), Residual(hidden), Residual(hidden), nn.SiLU(),
            nn.ConvTranspose2d(hidden, hidden // 2, 2, stride=2), nn.SiLU(),
            nn.ConvTranspose2d(hidden // 2, hidden // 4, 2, stride=2), nn.SiLU(),
            nn.Conv2d(hidden // 4, channels, 3, padding=1), nn.Tanh(),
        )

    def nearest_codes(self, z: torch.Tensor) -> torch.Tensor:
        """z ``[B, D, h, w]`` -> indices ``[B, h*w]`` of the nearest codebook rows (squared L2)."""
        flat = z.permute(0, 2, 3, 1).reshape(-1, z.shape[1])  # [B*h*w, D]
        dist = flat.pow(2).sum(1, keepdim=True) - 2 * flat @ self.codebook.weight.T + self.codebook.weight.pow(2).sum(1)
        return dist.argmin(1).view(z.shape[0], -1)

    def codes_to_latent(self, codes: torch.Tensor) -> torch.Tensor:
        """codes ``[B, h*w]`` -> latent ``[B, D, h, w]``."""
        h, w = self.grid
        return self.codebook(codes).view(codes.shape[0], h, w, -1).permute(0, 3, 1, 2)

    def encode_indices(self, images: torch.Tensor) -> torch.Tensor:
        return self.nearest_codes(self.encoder(images))

    def decode_code(self, codes: torch.Tensor) -> torch.Tensor:
        return self.decoder(self.codes_to_latent(codes))

    def forward(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Training pass: (reconstruction, VQ loss, codes). Straight-through gradients to the encoder."""
        z = self.encoder(images)
        codes = self.nearest_codes(z)
        z_q = self.codes_to_latent(codes)
        vq_loss = F.mse_loss(z_q, z.detach()) + 0.25 * F.mse_loss(z, z_q.detach())
        recon = self.decoder(z + (z_q - z).detach())
        return recon, vq_loss, codes


def train_digits_vq(model: DigitsVQ, images: torch.Tensor, steps: int, lr: float, batch_size: int,
                    generator: torch.Generator, progress=None, checkpoint: BuildCheckpoint | None = None) -> DigitsVQ:
    """Train the autoencoder on ``images [N, C, H, W]``; codes unused for 50 steps restart on encoder outputs.
    ``checkpoint`` (a cache build's) saves the state when a stop signal comes, and resumes from it."""
    checkpoint = checkpoint or BuildCheckpoint()
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    usage = torch.zeros(model.codebook_size)
    with torch.no_grad():  # start the codebook on encoder outputs so that every code is in use
        z = model.encoder(images[torch.randperm(len(images), generator=generator)[:256]])
        flat = z.permute(0, 2, 3, 1).reshape(-1, z.shape[1])
        model.codebook.weight.copy_(flat[torch.randperm(len(flat), generator=generator)[: model.codebook_size]])
    state = {"model": model, "optimizer": opt, "generator": generator, "usage": usage}
    for step in range(checkpoint.resume(state, progress), steps):
        batch = images[torch.randint(len(images), (batch_size,), generator=generator)]
        recon, vq_loss, codes = model(batch)
        loss = F.mse_loss(recon, batch) + vq_loss
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        usage += torch.bincount(codes.flatten(), minlength=model.codebook_size)
        if (step + 1) % 50 == 0 and step + 1 < steps * 0.8:
            _restart_dead_codes(model, batch, usage, generator)
            usage.zero_()
        if progress is not None:
            progress.update(1)
            progress.set_postfix(loss=f"{loss.item():.4f}")
        checkpoint.step_done(step + 1, steps, state)
    return model.eval()


@torch.no_grad()
def _restart_dead_codes(model: DigitsVQ, batch: torch.Tensor, usage: torch.Tensor, generator) -> None:
    dead = (usage == 0).nonzero()[:, 0]
    if len(dead) == 0:
        return
    z = model.encoder(batch)
    flat = z.permute(0, 2, 3, 1).reshape(-1, z.shape[1])
    pick = torch.randint(len(flat), (len(dead),), generator=generator)
    model.codebook.weight[dead] = flat[pick] + 0.01 * torch.randn(len(dead), flat.shape[1], generator=generator)


def code_usage_perplexity(codes: torch.Tensor, codebook_size: int) -> float:
    """exp(entropy) of the code histogram: how many codes are effectively used."""
    p = torch.bincount(codes.flatten(), minlength=codebook_size).float()
    p = p / p.sum()
    return math.exp(float(-(p[p > 0] * p[p > 0].log()).sum()))
