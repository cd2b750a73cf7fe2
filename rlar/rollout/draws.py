"""Random draws that are valid on every device.

The loop's random streams are CPU ``torch.Generator``s, so that one seed gives one stream on any machine. PyTorch
refuses a CPU generator for a CUDA tensor, so no random op here reads a tensor: uniforms are drawn from the stream on
its own device, moved to the tensor's device, and turned into the draw there (an inverse CDF). A seed then gives the
same uniforms on the CPU and on a GPU. The draws match too while the two devices' logits agree: they differ in the
last bits (other kernels, bf16), so a uniform that falls that close to a boundary of the CDF picks the neighbouring
code, and an autoregressive sample diverges from there on.
"""

from __future__ import annotations

import torch


def uniforms(shape: tuple[int, ...], generator: torch.Generator | None, device: torch.device | str) -> torch.Tensor:
    """``U[0, 1)`` of ``shape`` from ``generator`` (None: the global stream), placed on ``device``."""
    where = "cpu" if generator is None else generator.device
    return torch.rand(shape, generator=generator, device=where).to(device)


def step_uniforms(rows: int, sizes: list[int], generator: torch.Generator | None, device: torch.device | str
                  ) -> torch.Tensor:
    """The uniforms of a sampler's token draws, taken ahead in the order it takes them: for each step,
    ``rows * size`` of them (one per row and position, row-major), laid out as ``[rows, sum(sizes)]``. The rows
    can then be decoded in chunks, each reading the numbers the whole batch would (``categorical_at``)."""
    steps = [uniforms((rows * size, 1), generator, device).view(rows, size) for size in sizes]
    return torch.cat(steps, 1) if steps else torch.empty(rows, 0, device=device)


def categorical(probs: torch.Tensor, generator: torch.Generator | None) -> torch.Tensor:
    """One draw per row of the unnormalised probabilities ``probs [N, V]`` (>= 0, some > 0): codes ``[N, 1]`` long.

    Inverts the row's CDF at a uniform: the first code whose cumulative mass exceeds ``u * total``. A code without
    mass is never drawn, also when rounding puts ``u * total`` at the very end of the CDF.
    """
    return categorical_at(probs, uniforms((probs.shape[0], 1), generator, probs.device))


def categorical_at(probs: torch.Tensor, u: torch.Tensor) -> torch.Tensor:
    """:func:`categorical` at given uniforms ``u [N, K]`` (drawn ahead, e.g. so that any split of the rows into
    chunks reads the numbers an unchunked draw would): codes ``[N, K]`` long, K draws from each row."""
    cdf = probs.float().cumsum(-1)  # [N, V]
    u = u.to(probs.device) * cdf[:, -1:]  # [N, 1]
    draw = torch.searchsorted(cdf, u, right=True)  # [N, 1]
    last_with_mass = probs.shape[-1] - 1 - (probs.flip(-1) > 0).int().argmax(-1, keepdim=True)  # [N, 1]
    return torch.minimum(draw, last_with_mass)
