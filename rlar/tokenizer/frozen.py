"""The frozen tokenizer contract (docs/design.md, tokenizer), for any VQ model."""

from __future__ import annotations

import contextlib

import torch
from torch import nn

from rlar.tokenizer.taming_blocks import full_precision


@contextlib.contextmanager
def without_tf32(device: torch.device):
    """TF32 off for the block on CUDA (matmuls and cuDNN convolutions; restored after): TF32 keeps 10 mantissa bits,
    enough to flip nearest-code argmins near ties."""
    if device.type != "cuda":
        yield
        return
    matmul, cudnn = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False
    try:
        yield
    finally:
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = matmul, cudnn


class FrozenTokenizer(nn.Module):
    """Wraps a VQ model that has ``encode_indices(images) -> [B, h*w]`` and ``decode_code(codes) -> images``.

    Parameters never require grad, the module stays in eval mode, and calls run under no_grad (not inference
    mode: its codes feed the policy's autograd graph as embedding indices).
    Attributes: ``codebook_size``, ``grid`` (h, w), ``vq`` (the wrapped model), ``source`` (where its weights came
    from, if known) and ``metrics`` (its measured reconstruction quality, e.g. ``psnr_db``; ``{}``: none measured).
    """

    def __init__(self, vq: nn.Module, chunk_size: int = 256, source: str | None = None,
                 metrics: dict[str, float] | None = None):
        super().__init__()
        self.vq = vq.eval().requires_grad_(False)
        self.codebook_size: int = vq.codebook_size
        self.grid: tuple[int, int] = tuple(vq.grid)
        self.chunk_size = chunk_size
        self.source, self.metrics = source, dict(metrics or {})

    def train(self, mode: bool = True) -> FrozenTokenizer:  # stays in eval mode whatever the caller asks
        return super().train(False)

    @property
    def num_tokens(self) -> int:
        return self.grid[0] * self.grid[1]

    @torch.no_grad()
    def encode_indices(self, images: torch.Tensor) -> torch.Tensor:
        """images ``[B, C, H, W]`` in [-1, 1] -> codes ``[B, h*w]`` (row-major), in IEEE fp32 whatever autocast or
        TF32 setting the caller runs under (``hardware.precision`` and ``hardware.tf32`` are for the policy)."""
        with full_precision(images.device), without_tf32(images.device):
            codes = torch.cat([self.vq.encode_indices(x) for x in images.split(self.chunk_size)])  # [B, h*w]
        if codes.shape[-1] != self.num_tokens:
            raise ValueError(f"images of {tuple(images.shape[-2:])} px give {codes.shape[-1]} codes, and this "
                             f"tokenizer and the policy read {self.num_tokens} (grid {self.grid}); set data.image_size "
                             "to the tokenizer's tokenizer.image_size")
        return codes

    @torch.no_grad()
    def decode_code(self, codes: torch.Tensor) -> torch.Tensor:
        """codes ``[B, h*w]`` -> images ``[B, C, H, W]`` in [-1, 1], decoded ``chunk_size`` at a time without
        autocast (TF32 as ``hardware.tf32`` sets it: pixels, unlike codes, do not flip)."""
        if codes.shape[-1] != self.num_tokens:
            raise ValueError(f"expected {self.num_tokens} codes per image (grid {self.grid}), got {codes.shape[-1]}")
        if codes.min() < 0 or codes.max() >= self.codebook_size:
            raise ValueError(f"codes must be in [0, {self.codebook_size - 1}], got [{codes.min()}, {codes.max()}]")
        with full_precision(codes.device):
            return torch.cat([self.vq.decode_code(c) for c in codes.split(self.chunk_size)]).clamp(-1, 1)


def build_tokenizer_frozen(vq_model: nn.Module) -> FrozenTokenizer:
    """The seeds' name: wrap an already loaded VQ model as a frozen tokenizer."""
    return FrozenTokenizer(vq_model)
