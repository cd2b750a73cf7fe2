"""taming-transformers' VQGAN generator (``taming/models/vqgan.py`` VQModel with ``VectorQuantizer2``).

State dict: ``encoder.*``, ``decoder.*`` (taming_blocks), ``quantize.embedding.weight`` ``[n_embed, embed_dim]``,
``quant_conv`` ``[embed_dim, z_channels, 1, 1]``, ``post_quant_conv`` ``[z_channels, embed_dim, 1, 1]``; no buffers.
Codes: the nearest codebook row by squared L2 (no normalization). Index -> image goes through the codebook rows,
``post_quant_conv`` and the decoder (taming's own ``decode_code`` calls a missing ``embed_code``).
"""

from __future__ import annotations

import torch
from torch import nn

from rlar.tokenizer.taming_blocks import Decoder, Encoder, by_row_chunks, full_precision, latent_grid


class Codebook(nn.Module):
    """The quantizer's only parameter: ``embedding`` ``[n_embed, embed_dim]``."""

    def __init__(self, n_embed: int, embed_dim: int):
        super().__init__()
        self.embedding = nn.Embedding(n_embed, embed_dim)


class TamingVQGAN(nn.Module):
    """VQGAN generator with the FrozenTokenizer interface (``codebook_size``, ``grid``, codes ``[B, h*w]``).

    ``ddconfig``: taming's (``double_z`` must be false). ``image_size`` sets the grid; default
    ``ddconfig["resolution"]``.
    """

    def __init__(self, ddconfig: dict, n_embed: int, embed_dim: int, image_size: int | tuple[int, int] | None = None):
        super().__init__()
        self.codebook_size = n_embed
        self.grid = latent_grid(image_size or ddconfig["resolution"], len(ddconfig["ch_mult"]))
        self.encoder = Encoder(**ddconfig)
        self.decoder = Decoder(**ddconfig)
        self.quantize = Codebook(n_embed, embed_dim)
        self.quant_conv = nn.Conv2d(ddconfig["z_channels"], embed_dim, 1)
        self.post_quant_conv = nn.Conv2d(embed_dim, ddconfig["z_channels"], 1)

    def nearest_codes(self, z: torch.Tensor) -> torch.Tensor:
        """z ``[B, D, h, w]`` -> codes ``[B, h*w]``: argmin of ``|z|^2 + |e|^2 - 2 z.e``."""
        flat = z.float().permute(0, 2, 3, 1).reshape(-1, z.shape[1])  # [B*h*w, D], row-major positions
        e = self.quantize.embedding.weight.float()
        e_sq = e.pow(2).sum(1)
        codes = by_row_chunks(flat, len(e), lambda r: (r.pow(2).sum(1, keepdim=True) + e_sq - 2 * r @ e.T).argmin(1))
        return codes.view(z.shape[0], -1)

    def encode_indices(self, images: torch.Tensor) -> torch.Tensor:
        """images ``[B, 3, H, W]`` in [-1, 1] -> codes ``[B, h*w]``."""
        with full_precision(images.device):
            return self.nearest_codes(self.quant_conv(self.encoder(images.float())))

    def decode_code(self, codes: torch.Tensor) -> torch.Tensor:
        """codes ``[B, h*w]`` -> images ``[B, 3, H, W]`` (unbounded; FrozenTokenizer clamps)."""
        h, w = self.grid
        with full_precision(codes.device):
            z_q = self.quantize.embedding(codes).view(codes.shape[0], h, w, -1).permute(0, 3, 1, 2)  # [B, D, h, w]
            return self.decoder(self.post_quant_conv(z_q))


def taming_generator_state(checkpoint: dict) -> dict:
    """The generator's keys of a taming Lightning file (``checkpoint["state_dict"]``).

    A VQGAN file also holds its training loss (``loss.*``: LPIPS and discriminator), dropped here; a
    Net2NetTransformer file holds the VQGAN under ``first_stage_model.``, whose prefix is stripped.
    """
    if "state_dict" not in checkpoint:
        raise KeyError(f"a taming checkpoint keeps its weights under 'state_dict'; this file has {sorted(checkpoint)}")
    state = checkpoint["state_dict"]
    prefix = "first_stage_model."
    if any(k.startswith(prefix) for k in state):
        state = {k[len(prefix):]: v for k, v in state.items() if k.startswith(prefix)}
    return {k: v for k, v in state.items() if not k.startswith("loss.")}
