"""The taming-transformers convolutional autoencoder (``taming/modules/diffusionmodules/model.py``), rebuilt.

Parameter names follow the public code so that released state dicts load strictly: ``conv_in``,
``down.i.block.j`` / ``down.i.attn.j`` / ``down.i.downsample.conv``, ``mid.{block_1,attn_1,block_2}``,
``up.i.block.j`` / ``up.i.attn.j`` / ``up.i.upsample.conv``, ``norm_out``, ``conv_out``. VQGAN and IBQ use it;
LlamaGen reuses the blocks under its own container names. No timestep embedding (taming's ``temb_ch`` is 0).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


def swish(x: torch.Tensor) -> torch.Tensor:
    return x * torch.sigmoid(x)


def group_norm(channels: int) -> nn.GroupNorm:
    return nn.GroupNorm(num_groups=32, num_channels=channels, eps=1e-6, affine=True)


class ResnetBlock(nn.Module):
    """norm1 -> swish -> conv1 -> norm2 -> swish -> dropout -> conv2, plus a 1x1 ``nin_shortcut`` when widths differ."""

    def __init__(self, in_channels: int, out_channels: int, dropout: float = 0.0):
        super().__init__()
        self.norm1 = group_norm(in_channels)
        self.conv1 = nn.Conv2d(in_channels, out_channels, 3, padding=1)
        self.norm2 = group_norm(out_channels)
        self.dropout = nn.Dropout(dropout)
        self.conv2 = nn.Conv2d(out_channels, out_channels, 3, padding=1)
        self.nin_shortcut = nn.Conv2d(in_channels, out_channels, 1) if in_channels != out_channels else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.conv1(swish(self.norm1(x)))
        h = self.conv2(self.dropout(swish(self.norm2(h))))
        return h + (x if self.nin_shortcut is None else self.nin_shortcut(x))


class AttnBlock(nn.Module):
    """Single-head self-attention over the ``h*w`` positions, scaled ``c**-0.5``, with 1x1-conv q/k/v/proj_out."""

    def __init__(self, channels: int):
        super().__init__()
        self.norm = group_norm(channels)
        self.q = nn.Conv2d(channels, channels, 1)
        self.k = nn.Conv2d(channels, channels, 1)
        self.v = nn.Conv2d(channels, channels, 1)
        self.proj_out = nn.Conv2d(channels, channels, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, c, h, w = x.shape
        n = self.norm(x)
        q, k, v = (t.reshape(b, c, h * w).transpose(1, 2) for t in (self.q(n), self.k(n), self.v(n)))  # [B, hw, c]
        y = F.scaled_dot_product_attention(q, k, v)  # default scale 1/sqrt(c)
        return x + self.proj_out(y.transpose(1, 2).reshape(b, c, h, w))


class Downsample(nn.Module):
    """Pad right and bottom by one, then a stride-2 3x3 conv without padding: ``[B, C, H, W] -> [B, C, H/2, W/2]``."""

    def __init__(self, channels: int):
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, 3, stride=2, padding=0)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(F.pad(x, (0, 1, 0, 1)))


class Upsample(nn.Module):
    """Nearest x2, then a 3x3 conv: ``[B, C, H, W] -> [B, C, 2H, 2W]``."""

    def __init__(self, channels: int):
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(F.interpolate(x, scale_factor=2.0, mode="nearest"))


def resolution_level(in_ch: int, out_ch: int, n_blocks: int, attention: bool, dropout: float = 0.0,
                     blocks: str = "block") -> nn.Module:
    """One resolution level: ResnetBlocks under ``blocks`` (taming: ``block``, LlamaGen: ``res``) and ``attn``
    (one AttnBlock after each ResnetBlock, or none)."""
    level = nn.Module()
    level.blocks_name = blocks
    level.add_module(blocks, nn.ModuleList(ResnetBlock(in_ch if j == 0 else out_ch, out_ch, dropout)
                                           for j in range(n_blocks)))
    level.attn = nn.ModuleList(AttnBlock(out_ch) for _ in range(n_blocks if attention else 0))
    return level


def run_level(level: nn.Module, h: torch.Tensor) -> torch.Tensor:
    for j, block in enumerate(getattr(level, level.blocks_name)):
        h = block(h)
        if len(level.attn):
            h = level.attn[j](h)
    return h


def middle(channels: int, dropout: float) -> nn.Module:
    mid = nn.Module()
    mid.block_1 = ResnetBlock(channels, channels, dropout)
    mid.attn_1 = AttnBlock(channels)
    mid.block_2 = ResnetBlock(channels, channels, dropout)
    return mid


class Encoder(nn.Module):
    """Image ``[B, in_channels, H, W]`` -> latent ``[B, z_channels, H/f, W/f]``, ``f = 2**(len(ch_mult)-1)``.

    Takes a taming ``ddconfig``. ``resolution`` fixes the architecture (attention at levels whose side is in
    ``attn_resolutions``), not the input size. ``out_ch`` belongs to the decoder and is ignored here.
    """

    def __init__(self, *, ch: int, ch_mult: list[int], num_res_blocks: int, attn_resolutions: list[int],
                 in_channels: int, resolution: int, z_channels: int, double_z: bool = False, dropout: float = 0.0,
                 out_ch: int = 3):
        super().__init__()
        if double_z:
            raise ValueError("ddconfig.double_z=True gives the encoder 2*z_channels outputs (a VAE); VQ models need "
                             "double_z: false")
        widths = [ch * m for m in ch_mult]
        self.conv_in = nn.Conv2d(in_channels, ch, 3, padding=1)
        self.down = nn.ModuleList()
        res, block_in = resolution, ch
        for i, width in enumerate(widths):
            level = resolution_level(block_in, width, num_res_blocks, res in attn_resolutions, dropout)
            if i != len(widths) - 1:
                level.downsample = Downsample(width)
                res //= 2
            self.down.append(level)
            block_in = width
        self.mid = middle(block_in, dropout)
        self.norm_out = group_norm(block_in)
        self.conv_out = nn.Conv2d(block_in, z_channels, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.conv_in(x)
        for i, level in enumerate(self.down):
            h = run_level(level, h)
            if i != len(self.down) - 1:
                h = level.downsample(h)
        h = self.mid.block_2(self.mid.attn_1(self.mid.block_1(h)))
        return self.conv_out(swish(self.norm_out(h)))


class Decoder(nn.Module):
    """Latent ``[B, z_channels, h, w]`` -> image ``[B, out_ch, h*f, w*f]``, unbounded (no tanh).

    ``up.i`` is level i (``up.0`` is the full resolution), built from the lowest level up with
    ``num_res_blocks + 1`` blocks each. ``in_channels`` and ``double_z`` belong to the encoder and are ignored.
    """

    def __init__(self, *, ch: int, out_ch: int, ch_mult: list[int], num_res_blocks: int, attn_resolutions: list[int],
                 resolution: int, z_channels: int, dropout: float = 0.0, in_channels: int = 3,
                 double_z: bool = False):
        super().__init__()
        widths = [ch * m for m in ch_mult]
        res, block_in = resolution // 2 ** (len(widths) - 1), widths[-1]
        self.conv_in = nn.Conv2d(z_channels, block_in, 3, padding=1)
        self.mid = middle(block_in, dropout)
        levels = []
        for i in reversed(range(len(widths))):
            level = resolution_level(block_in, widths[i], num_res_blocks + 1, res in attn_resolutions, dropout)
            if i != 0:
                level.upsample = Upsample(widths[i])
                res *= 2
            levels.insert(0, level)
            block_in = widths[i]
        self.up = nn.ModuleList(levels)
        self.norm_out = group_norm(block_in)
        self.conv_out = nn.Conv2d(block_in, out_ch, 3, padding=1)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        h = self.mid.block_2(self.mid.attn_1(self.mid.block_1(self.conv_in(z))))
        for i in reversed(range(len(self.up))):
            h = run_level(self.up[i], h)
            if i != 0:
                h = self.up[i].upsample(h)
        return self.conv_out(swish(self.norm_out(h)))


def latent_grid(image_size: int | tuple[int, int], num_levels: int) -> tuple[int, int]:
    """Code grid ``(h, w)`` of an encoder with ``num_levels`` resolution levels (downsampling ``2**(num_levels-1)``)."""
    size = (image_size, image_size) if isinstance(image_size, int) else tuple(image_size)
    factor = 2 ** (num_levels - 1)
    if len(size) != 2 or any(s % factor for s in size):
        raise ValueError(f"image_size={image_size} must be an int or (H, W), each a multiple of the downsampling "
                         f"factor {factor}")
    return size[0] // factor, size[1] // factor


def full_precision(device: torch.device):
    """Autocast off: codes are argmins/argmaxes that fp16/bf16 rounding would flip near ties."""
    return torch.autocast(device.type, enabled=False)


def by_row_chunks(flat: torch.Tensor, n_codes: int, pick, max_elements: int = 2**26) -> torch.Tensor:
    """``pick(rows [n, D]) -> codes [n]`` over chunks of rows, so that a score matrix ``[n, n_codes]`` stays
    under ``max_elements`` (IBQ's 262,144 codes for a batch of 16x16 grids would otherwise need gigabytes)."""
    return torch.cat([pick(rows) for rows in flat.split(max(1, max_elements // n_codes))])
