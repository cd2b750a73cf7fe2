"""Decoding under a learned schedule, the per-step record the update re-scores, and the schedule's log-probability.

At step s each unfinished row reads the ARPG's state (``rlar.schedule.state``), draws a degree k (1..K, at most
what is left) and k positions without replacement (Gumbel-top-k: a Plackett–Luce draw), then samples the tokens of
those positions from the ARPG (each position's token inverts its distribution's CDF at one uniform drawn for that
position before the decoding: each position is decoded once, so every token is an exact draw; rows of one group may
share those uniforms, so that their rewards differ by their schedules rather than by token luck: common random
numbers). Step ``max_steps - 1`` fills every position left: its degree and positions are forced and score
log-probability 0. A row's log-probability is the sum over its drawn steps of the degree's and the ordered
positions' log-probabilities.
"""

from __future__ import annotations

from dataclasses import dataclass, fields

import torch

from rlar.contracts import ParallelPolicy
from rlar.rollout.draws import categorical, categorical_at, uniforms
from rlar.rollout.sampling import check_labels, truncate
from rlar.schedule.network import ScheduleNet, degree_logprob
from rlar.schedule.plackett_luce import gumbel_order, plackett_luce_logprob
from rlar.schedule.state import PENDING, read_state


@dataclass
class ScheduleTrace:
    """The states and actions of a batch's decoding steps (``S`` steps, ``N`` rows): what the update re-scores."""

    pooled: torch.Tensor  # [S, N, D] fp32
    progress: torch.Tensor  # [S, N, 2] fp32: step / max_steps, fraction decoded
    uncertainty: torch.Tensor  # [S, N, T, 4] fp32: entropy / log V, max probability, both standardized
    pending: torch.Tensor  # [S, N, T] bool: positions still empty before the step
    degree: torch.Tensor  # [S, N] long: positions decoded at the step (0: the row had finished)
    picks: torch.Tensor  # [S, N, T] long: positions in the order drawn; the first ``degree`` were decoded
    drawn: torch.Tensor  # [S, N] bool: degree and positions were drawn (not forced, not finished)

    def rows(self, idx: torch.Tensor) -> ScheduleTrace:
        return ScheduleTrace(*(getattr(self, f.name)[:, idx] for f in fields(self)))

    @property
    def steps(self) -> torch.Tensor:
        """Decoding steps of each row ``[N]`` (long)."""
        return (self.degree > 0).sum(0)


@dataclass
class ScheduleSample:
    tokens: torch.Tensor  # [N, T] long, raster
    logprobs: torch.Tensor  # [N, T] fp32: the ARPG's log-prob of each token (raster)
    decoded_at: torch.Tensor  # [N, T] long: the step that decoded each position
    schedule_logprob: torch.Tensor  # [N] fp32: log-prob of the schedule (degrees and positions)
    trace: ScheduleTrace

    @property
    def steps(self) -> torch.Tensor:
        return self.trace.steps


def schedule_logprob(net: ScheduleNet, trace: ScheduleTrace) -> tuple[torch.Tensor, torch.Tensor]:
    """``(log-prob [N], entropy [N])`` of the traced schedule under ``net``: per drawn step, the degree's
    log-prob plus the Plackett–Luce log-prob of its ordered positions, summed over steps (differentiable). The
    entropy is the degree head's plus that of the first position drawn, summed over the drawn steps."""
    s, n = trace.degree.shape
    flat = {f.name: getattr(trace, f.name).flatten(0, 1) for f in fields(trace)}  # [S*N, ...]
    degree_logits, scores = net(flat["pooled"], flat["progress"], flat["uncertainty"])  # [S*N, K], [S*N, T]
    pending, degree, drawn = flat["pending"], flat["degree"], flat["drawn"]
    logp_degree, entropy_degree = degree_logprob(degree_logits, pending.sum(1), degree)
    logp_positions = plackett_luce_logprob(scores, pending, flat["picks"], torch.where(drawn, degree, 0))
    open_rows = pending | ~pending.any(-1, keepdim=True)  # a finished row reads every position: finite, unused
    first = torch.log_softmax(scores.float().masked_fill(~open_rows, float("-inf")), dim=-1)  # [S*N, T]
    entropy_first = -(first.exp() * first.masked_fill(~pending, 0.0)).sum(-1)  # 0 * -inf never enters the backward
    logp = torch.where(drawn, logp_degree + logp_positions, 0.0).view(s, n).sum(0)
    entropy = torch.where(drawn, entropy_degree + entropy_first, 0.0).view(s, n).sum(0)
    return logp, entropy


@torch.no_grad()
def sample_scheduled(arpg: ParallelPolicy, net: ScheduleNet, labels: torch.Tensor | None, num_samples: int,
                     max_steps: int, temperature: float = 1.0, top_k: int | None = None, top_p: float | None = None,
                     cfg_scale: float = 1.0, rng: torch.Generator | None = None, shared_noise: int = 1
                     ) -> ScheduleSample:
    """Decode ``num_samples`` images with the frozen ``arpg`` under ``net``'s schedule, at most
    ``max_steps`` steps each; ``labels [N]`` (-1 / None: the null class). Each block of ``shared_noise`` adjacent
    rows shares the token noise."""
    if max_steps < 1:
        raise ValueError(f"schedule.max_steps must be >= 1, got {max_steps}")
    if num_samples % shared_noise:
        raise ValueError(f"{num_samples} rows do not split into groups of {shared_noise} sharing token noise")
    check_labels(arpg, labels, num_samples)
    n, seq_len, device = num_samples, arpg.block_size, arpg.freqs_cis.device
    tokens = torch.zeros(n, seq_len, dtype=torch.long, device=device)
    logprobs = torch.zeros(n, seq_len, dtype=torch.float32, device=device)
    decoded_at = torch.full((n, seq_len), PENDING, dtype=torch.long, device=device)
    slots = torch.arange(seq_len, device=device)
    token_u = uniforms((n // shared_noise, seq_len), rng, device).repeat_interleave(shared_noise, 0)  # [N, T]
    record = []
    for s in range(max_steps):
        pending = decoded_at == PENDING  # [N, T]
        remaining = pending.sum(1)  # [N]
        if not remaining.any():
            break
        logp, pooled, uncertainty = read_state(arpg, labels, tokens, decoded_at, cfg_scale, temperature)
        progress = torch.stack([torch.full((n,), s / max_steps, device=device), 1 - remaining / seq_len], dim=-1)
        degree_logits, scores = net(pooled, progress, uncertainty)  # [N, K], [N, T]
        allowed = torch.arange(1, net.max_degree + 1, device=device)[None] <= remaining[:, None].clamp_min(1)
        probs = torch.softmax(degree_logits.float().masked_fill(~allowed, float("-inf")), dim=-1)
        k = 1 + categorical(probs, rng)[:, 0]  # [N]
        last = s == max_steps - 1
        degree = torch.where(remaining > 0, remaining if last else k, 0)  # [N]
        picks = gumbel_order(scores, pending, rng)  # [N, T]: pending positions first, in drawn order
        record.append((pooled, progress, uncertainty, pending, degree, picks, (remaining > 0) & (not last)))
        now = torch.zeros_like(pending).scatter(1, picks, slots[None] < degree[:, None])  # [N, T] raster
        chosen = logp[now]  # [M, V]: the M positions decoded at this step, row-major
        draw = categorical_at(truncate(chosen, top_k, top_p).exp(), token_u[now][:, None])  # [M, 1]
        tokens[now] = draw[:, 0]
        logprobs[now] = chosen.gather(-1, draw)[:, 0]
        decoded_at = torch.where(now, s, decoded_at)
    trace = ScheduleTrace(*(torch.stack(parts) for parts in zip(*record, strict=True)))
    logp_schedule, _ = schedule_logprob(net, trace)
    return ScheduleSample(tokens, logprobs, decoded_at, logp_schedule, trace)
