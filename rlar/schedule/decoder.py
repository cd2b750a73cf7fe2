"""The policy of ``rollout.mode=schedule``: a frozen ARPG decoding under a trainable schedule network."""

from __future__ import annotations

import torch
from torch import nn

from rlar.contracts import ParallelPolicy
from rlar.rollout.parallel_decoding import one_scale
from rlar.schedule.network import ScheduleNet
from rlar.schedule.sampler import ScheduleSample, ScheduleTrace, sample_scheduled, schedule_logprob


class ScheduleDecoder(nn.Module):
    """``arpg`` (an :class:`rlar.policy.arpg.ARPG`, frozen: no gradients, always in eval mode) and ``net``
    (:class:`ScheduleNet`, the only trainable part). ``forward(trace)`` re-scores a rollout's schedule: ``(log-prob
    [N, 1], entropy [N, 1])``, one action per sample; ``decode`` samples images under the schedule. With
    ``common_noise``, the samples of one group (``decode``'s ``group_size``) share the token noise."""

    decodes_in_parallel = True

    def __init__(self, arpg: ParallelPolicy, max_steps: int = 16, max_degree: int = 16, hidden: int = 64,
                 common_noise: bool = True):
        super().__init__()
        if max_steps < 1 or max_degree < 1:
            raise ValueError(f"schedule.max_steps={max_steps} and schedule.max_degree={max_degree} must be >= 1")
        # the ARPG's submodule name, ``generator``, prefixes its weights in saved checkpoints: read it as ``arpg``
        self.generator = arpg.eval().requires_grad_(False)
        self.net = ScheduleNet(arpg.n_embd, arpg.block_size, max_degree, hidden)
        self.max_steps, self.common_noise = max_steps, common_noise
        self.vocab_size, self.block_size, self.n_embd = arpg.vocab_size, arpg.block_size, arpg.n_embd
        self.decoding = {"max_steps": max_steps, "max_degree": max_degree}  # a parallel decoder (rlar.eval.evaluate)

    @property
    def arpg(self) -> ParallelPolicy:
        """The frozen ARPG."""
        return self.generator

    def train(self, mode: bool = True) -> ScheduleDecoder:
        super().train(mode)
        self.arpg.eval()
        return self

    def forward(self, trace: ScheduleTrace) -> tuple[torch.Tensor, torch.Tensor]:
        logp, entropy = schedule_logprob(self.net, trace)
        return logp[:, None], entropy[:, None]

    def decode(self, labels: torch.Tensor | None, num_samples: int, temperature: float = 1.0,
               top_k: int | None = None, top_p: float | None = None, cfg_scale=1.0,
               generator: torch.Generator | None = None, group_size: int = 1) -> ScheduleSample:
        """``num_samples`` images for ``labels [N]`` (the interface of
        ``rlar.rollout.parallel_decoding.parallel_generations``), in groups of ``group_size`` adjacent samples of one
        item."""
        return sample_scheduled(self.arpg, self.net, labels, num_samples, self.max_steps, temperature, top_k,
                                top_p, one_scale(cfg_scale), generator, group_size if self.common_noise else 1)

