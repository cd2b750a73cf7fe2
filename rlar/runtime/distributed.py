"""torch.distributed for the loop: the process's rank and the collectives it needs, each a no-op in a single
process (so the single-process path computes exactly what it did before distributed training existed)."""

from __future__ import annotations

import contextlib
import os

import torch
import torch.distributed as dist


class RaisedOnEveryRank(RuntimeError):
    """An error every rank raises at the same point, its cause computed from values they share (gathered, reduced or
    broadcast), so that they may still make a collective, a save, before it goes on
    (``rlar.run_record.rescue_save``)."""


def launched_by_torchrun() -> bool:
    return "RANK" in os.environ and "WORLD_SIZE" in os.environ


def env_rank() -> int:
    """The rank torchrun gave this process (0 when not launched by torchrun); readable before the process group
    exists."""
    return int(os.environ.get("RANK", 0))


def env_world_size() -> int:
    """The processes torchrun started (1 when not launched by torchrun); readable before the process group exists."""
    return int(os.environ.get("WORLD_SIZE", 1))


def is_distributed() -> bool:
    return dist.is_available() and dist.is_initialized()


def rank() -> int:
    return dist.get_rank() if is_distributed() else 0


def world_size() -> int:
    return dist.get_world_size() if is_distributed() else 1


def is_main() -> bool:
    return rank() == 0


def barrier() -> None:
    if is_distributed():
        dist.barrier()


@contextlib.contextmanager
def main_process_first():
    """Rank 0 runs the body first (e.g. trains and caches the tokenizer), the others after it (reading the cache).
    When the body raises on rank 0, the others are released to run it too (and meet the same error) instead of
    waiting for the barrier's timeout."""
    if not is_main():
        barrier()
    try:
        yield
    finally:
        if is_main():
            barrier()


def broadcast_object(obj):
    """Rank 0's ``obj`` on every rank."""
    if not is_distributed():
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def gather_objects(obj) -> list:
    """``[obj of rank 0, obj of rank 1, ...]`` on every rank."""
    if not is_distributed():
        return [obj]
    out = [None] * world_size()
    dist.all_gather_object(out, obj)
    return out


def gather_rows(x: torch.Tensor) -> torch.Tensor:
    """Concatenate every rank's ``x [n, ...]`` (the same shape on each) in rank order: ``[world * n, ...]``."""
    if not is_distributed():
        return x
    parts = [torch.empty_like(x) for _ in range(world_size())]
    dist.all_gather(parts, x.contiguous())
    return torch.cat(parts)


def gather_named_rows(named: dict[str, torch.Tensor], rows: int, device) -> dict[str, torch.Tensor]:
    """:func:`gather_rows` of each named ``[rows]`` tensor, over the names of every rank: a name this rank lacks (a
    remote reward whose servers all failed here reports no components) gathers NaN rows, so that every rank makes
    the same collectives."""
    if not is_distributed():
        return named
    names = sorted(set().union(*gather_objects(sorted(named))))
    return {name: gather_rows(named[name] if name in named else torch.full((rows,), float("nan"), device=device))
            for name in names}


def any_rank(flag: bool, device) -> bool:
    """True on every rank when ``flag`` is True on some rank."""
    if not is_distributed():
        return flag
    t = torch.tensor([float(flag)], device=device)
    dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return bool(t.item())


def sum_over_ranks(values: torch.Tensor) -> torch.Tensor:
    """The element-wise sum of ``values`` over every rank (a new tensor); outside torchrun, ``values``."""
    if not is_distributed():
        return values
    total = values.clone()
    dist.all_reduce(total)
    return total


def mean_std_over_ranks(values: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The mean and the (unbiased) std of ``values [n]`` pooled over every rank's rows; outside torchrun, this
    rank's."""
    if not is_distributed():
        return values.mean(), values.std()
    v = values.double()
    moments = torch.stack([v.new_tensor(float(v.numel())), v.sum(), v.square().sum()])  # [3]
    dist.all_reduce(moments)
    n, total, squares = moments
    mean = total / n
    var = (squares - n * mean**2) / (n - 1)
    return mean.to(values.dtype), var.clamp_min(0).sqrt().to(values.dtype)


def mean_over_ranks(stats: dict[str, float], device, maxima: tuple[str, ...] = (), totals: tuple[str, ...] = ()
                    ) -> dict[str, float]:
    """The mean of each value over ranks, the largest for the keys in ``maxima`` (a deviation's maximum is the
    largest on any rank), the sum for the keys that end with one of ``totals`` (counts); every rank passes the same
    keys."""
    if not is_distributed() or not stats:
        return stats
    summed = {k for k in stats if k not in maxima and k.endswith(totals)} if totals else set()
    out = {}
    for op, keys in ((dist.ReduceOp.SUM, sorted(k for k in stats if k not in maxima)),
                     (dist.ReduceOp.MAX, sorted(k for k in stats if k in maxima))):
        if keys:
            values = torch.tensor([float(stats[k]) for k in keys], dtype=torch.float64, device=device)
            dist.all_reduce(values, op=op)
            divisors = [world_size() if op == dist.ReduceOp.SUM and k not in summed else 1 for k in keys]
            out.update(zip(keys, (values / values.new_tensor(divisors)).tolist(), strict=True))
    return out


@torch.no_grad()
def replica_divergence(module: torch.nn.Module, device) -> float:
    """Largest difference between ranks of any parameter's sum or sum of squares: 0 while data-parallel replicas
    stay identical (a check that gradients were synchronised)."""
    if not is_distributed():
        return 0.0
    sums = [torch.stack([p.double().sum(), p.double().square().sum()]) for p in module.parameters()]
    local = torch.cat(sums).to(device)  # [2 * num_params]
    every = gather_rows(local[None])  # [world, 2 * num_params]
    return float((every - every[0]).abs().max())
