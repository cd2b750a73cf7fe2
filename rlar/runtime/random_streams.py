"""The loop's random streams: ``data`` (the batch order, shared by every rank), ``sample`` (rollouts) and ``update``
(minibatch shuffles), the last two per rank; how they are seeded, saved in a checkpoint and restored."""

from __future__ import annotations

import logging

import torch

from rlar.runtime import distributed

log = logging.getLogger(__name__)

PER_RANK_RNG = ("sample", "update")  # streams that differ between ranks (the data stream is shared)


def rank_generators(seed: int, rank: int) -> dict[str, torch.Generator]:
    """The loop's random streams: the data order is the same on every rank (each takes its slice of one global
    batch); sampling and minibatch shuffles differ per rank. Rank 0's streams are those of a single process."""
    seeds = {"data": seed, "sample": seed + 1 + 1000 * rank, "update": seed + 2 + 1000 * rank}
    return {name: torch.Generator().manual_seed(s) for name, s in seeds.items()}


def gather_rng(gens: dict[str, torch.Generator]) -> dict:
    """What a checkpoint keeps of the streams: every rank's per-rank and torch states, and on a GPU its CUDA
    generator's (ARPG's training orders draw from it); a collective: every rank calls it. The data stream is not
    saved: it is replayed from its seed (``ImageData.batches``' ``start``)."""
    saved = {**{name: distributed.gather_objects(gens[name].get_state()) for name in PER_RANK_RNG},
             "torch": distributed.gather_objects(torch.get_rng_state())}
    if torch.cuda.is_initialized():  # a run on a GPU: the current device's, each rank's own (a CPU run starts none)
        saved["cuda"] = distributed.gather_objects(torch.cuda.get_rng_state())
    return saved


def restore_rng(gens: dict, saved: dict, start: int, seed: int) -> None:
    """Set the streams saved at ``start``; per-rank streams saved by another number of processes, and torch's
    global ones, are re-seeded from ``seed`` and ``start``."""
    rank, world = distributed.rank(), distributed.world_size()
    if len(saved["torch"]) == world:
        for name in PER_RANK_RNG:
            gens[name].set_state(saved[name][rank])
        torch.set_rng_state(saved["torch"][rank])
        if "cuda" in saved and torch.cuda.is_initialized():  # saved on GPUs, resumed on GPUs
            torch.cuda.set_rng_state(saved["cuda"][rank])
        elif torch.cuda.is_initialized():  # saved on CPUs, or before checkpoints kept it: not the first draws again
            log.warning("the checkpoint holds no CUDA generator state: it is re-seeded")
            torch.cuda.manual_seed_all(seed + 7919 * start)
        return
    log.warning("checkpoint written by %d processes, resumed on %d: per-rank sampling streams re-seeded",
                len(saved["torch"]), world)
    torch.manual_seed(seed + 7919 * start)  # the global streams (CPU and CUDA) too, not the run's first draws again
    for name, g in rank_generators(seed + 7919 * start, rank).items():
        if name in PER_RANK_RNG:
            gens[name].set_state(g.get_state())
