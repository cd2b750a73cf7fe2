"""LlamaGen's VQ tokenizer (FoundationVision/LlamaGen ``tokenizer/tokenizer_image/vq_model.py``, ``VQ-16``/``VQ-8``).

The taming blocks under LlamaGen's names: ``encoder.conv_blocks.i.{res.j, attn.j, downsample.conv}``,
``encoder.mid.{0,1,2}``, ``decoder.conv_blocks.i.{res.j, attn.j, upsample.conv}`` (``decoder.conv_blocks.0`` is the
LOWEST resolution), ``quantize.embedding.weight`` ``[codebook_size, codebook_embed_dim]``, the persistent buffer
``quantize.codebook_used`` ``[65536]`` (training statistics, unused here), ``quant_conv``, ``post_quant_conv``.
Attention sits only at the lowest level (after each ResnetBlock there) and in ``mid.1``.
Codes: z and the codebook are l2-normalized, then the nearest row by squared L2 (the cosine argmax).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from rlar.tokenizer.taming_blocks import (
    AttnBlock,
    Downsample,
    ResnetBlock,
    Upsample,
    by_row_chunks,
    full_precision,
    group_norm,
    latent_grid,
    resolution_level,
    run_level,
    swish,
)

CODEBOOK_USED_LEN = 65536  # LlamaGen's fixed-size ring buffer of recent codes, whatever the codebook size


def _middle(channels: int) -> nn.ModuleList:
    return nn.ModuleList([ResnetBlock(channels, channels), AttnBlock(channels), ResnetBlock(channels, channels)])


class LlamaGenEncoder(nn.Module):
    """``[B, 3, H, W] -> [B, z_channels, H/f, W/f]``, ``f = 2**(len(ch_mult)-1)``."""

    def __init__(self, ch: int, ch_mult: list[int], num_res_blocks: int, z_channels: int, in_channels: int = 3):
        super().__init__()
        widths = [ch * m for m in ch_mult]
        self.conv_in = nn.Conv2d(in_channels, ch, 3, padding=1)
        self.conv_blocks = nn.ModuleList()
        block_in = ch
        for i, width in enumerate(widths):
            level = resolution_level(block_in, width, num_res_blocks, i == len(widths) - 1, blocks="res")
            if i != len(widths) - 1:
                level.downsample = Downsample(width)
            self.conv_blocks.append(level)
            block_in = width
        self.mid = _middle(block_in)
        self.norm_out = group_norm(block_in)
        self.conv_out = nn.Conv2d(block_in, z_channels, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.conv_in(x)
        for i, level in enumerate(self.conv_blocks):
            h = run_level(level, h)
            if i != len(self.conv_blocks) - 1:
                h = level.downsample(h)
        for block in self.mid:
            h = block(h)
        return self.conv_out(swish(self.norm_out(h)))


class LlamaGenDecoder(nn.Module):
    """``[B, z_channels, h, w] -> [B, 3, h*f, w*f]``, unbounded; ``conv_blocks`` run lowest resolution first."""

    def __init__(self, ch: int, ch_mult: list[int], num_res_blocks: int, z_channels: int, out_channels: int = 3):
        super().__init__()
        widths = [ch * m for m in ch_mult]
        block_in = widths[-1]
        self.conv_in = nn.Conv2d(z_channels, block_in, 3, padding=1)
        self.mid = _middle(block_in)
        self.conv_blocks = nn.ModuleList()
        for i in reversed(range(len(widths))):
            level = resolution_level(block_in, widths[i], num_res_blocks + 1, i == len(widths) - 1, blocks="res")
            if i != 0:
                level.upsample = Upsample(widths[i])
            self.conv_blocks.append(level)
            block_in = widths[i]
        self.norm_out = group_norm(block_in)
        self.conv_out = nn.Conv2d(block_in, out_channels, 3, padding=1)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        h = self.conv_in(z)
        for block in self.mid:
            h = block(h)
        for i, level in enumerate(self.conv_blocks):
            h = run_level(level, h)
            if i != len(self.conv_blocks) - 1:
                h = level.upsample(h)
        return self.conv_out(swish(self.norm_out(h)))


class LlamaGenQuantizer(nn.Module):
    def __init__(self, codebook_size: int, embed_dim: int, l2_norm: bool):
        super().__init__()
        self.l2_norm = l2_norm
        self.embedding = nn.Embedding(codebook_size, embed_dim)
        self.register_buffer("codebook_used", torch.zeros(CODEBOOK_USED_LEN))  # in the released files; unused

    def codebook(self) -> torch.Tensor:
        """The rows codes stand for ``[N, D]`` (l2-normalized when ``l2_norm``)."""
        e = self.embedding.weight.float()
        return F.normalize(e, dim=-1) if self.l2_norm else e

    def nearest(self, z: torch.Tensor) -> torch.Tensor:
        """z ``[B, D, h, w]`` -> codes ``[B, h*w]``: argmin of ``|z|^2 + |e|^2 - 2 z.e`` (after l2-norm when set)."""
        flat = z.float().permute(0, 2, 3, 1).reshape(-1, z.shape[1])  # [B*h*w, D], row-major positions
        if self.l2_norm:
            flat = F.normalize(flat, dim=-1)
        e = self.codebook()
        e_sq = e.pow(2).sum(1)
        codes = by_row_chunks(flat, len(e), lambda r: (r.pow(2).sum(1, keepdim=True) + e_sq - 2 * r @ e.T).argmin(1))
        return codes.view(z.shape[0], -1)


class LlamaGenVQ(nn.Module):
    """LlamaGen's ``VQModel`` with the FrozenTokenizer interface; ``grid`` comes from ``image_size``.

    ``ch`` and ``num_res_blocks`` are LlamaGen's Encoder/Decoder defaults (128, 2); ``VQ-16`` has
    ``ch_mult`` [1, 1, 2, 2, 4], ``VQ-8`` [1, 2, 2, 4].
    """

    def __init__(self, image_size: int | tuple[int, int] = 256, codebook_size: int = 16384,
                 codebook_embed_dim: int = 8, codebook_l2_norm: bool = True, ch: int = 128,
                 ch_mult: list[int] = (1, 1, 2, 2, 4), num_res_blocks: int = 2, z_channels: int = 256):
        super().__init__()
        self.codebook_size = codebook_size
        self.grid = latent_grid(image_size, len(ch_mult))
        self.encoder = LlamaGenEncoder(ch, ch_mult, num_res_blocks, z_channels)
        self.decoder = LlamaGenDecoder(ch, ch_mult, num_res_blocks, z_channels)
        self.quantize = LlamaGenQuantizer(codebook_size, codebook_embed_dim, codebook_l2_norm)
        self.quant_conv = nn.Conv2d(z_channels, codebook_embed_dim, 1)
        self.post_quant_conv = nn.Conv2d(codebook_embed_dim, z_channels, 1)

    def encode_indices(self, images: torch.Tensor) -> torch.Tensor:
        """images ``[B, 3, H, W]`` in [-1, 1] -> codes ``[B, h*w]``."""
        with full_precision(images.device):
            return self.quantize.nearest(self.quant_conv(self.encoder(images.float())))

    def decode_code(self, codes: torch.Tensor) -> torch.Tensor:
        """codes ``[B, h*w]`` -> images ``[B, 3, H, W]`` (unbounded; FrozenTokenizer clamps).

        The latent shape ``(B, D, h, w)`` comes from ``grid``, which LlamaGen's ``decode_code(code, shape)`` needs.
        """
        h, w = self.grid
        with full_precision(codes.device):
            z_q = self.quantize.codebook()[codes].view(codes.shape[0], h, w, -1).permute(0, 3, 1, 2)  # [B, D, h, w]
            return self.decoder(self.post_quant_conv(z_q))


def llamagen_state(checkpoint: dict) -> dict:
    """The generator's state dict in a LlamaGen training/release file: ``checkpoint["model"]``."""
    if "model" not in checkpoint:
        raise KeyError(f"a LlamaGen VQ checkpoint keeps its weights under 'model'; this file has {sorted(checkpoint)}")
    return checkpoint["model"]
