"""Parallel decoding (ARPG): several positions per step in a random order per sample, with log-probabilities, and
the teacher-forced recompute that reproduces them.

A step-size schedule ``[S]`` (shared by the batch, so that tensors keep their shapes) says how many tokens each
step decodes; each row decodes its own random permutation of the T positions in that grouping. The log-prob
rule is the raster sampler's (``rlar.rollout.sampling``): guided logits ``z_u + s * (z_c - z_u)`` with this
step's scale, divided by the temperature, log-softmax in fp32; top-k / top-p only restrict the draw.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from rlar.contracts import ParallelDecoder, ParallelPolicy
from rlar.rollout.draws import categorical_at, step_uniforms, uniforms
from rlar.rollout.sampling import (
    StartTokens,
    cache_dtype,
    check_labels,
    guided_logprobs,
    is_guided,
    row_chunks,
    split_start_tokens,
    truncate,
    with_null_class,
)

# the fraction of positions still masked after step s of N, as a function of k = s + 1 and N, computed in ARPG's
# order of operations (pi / 2 * k / N, not pi / 2 * (k / N)): where T * ratio is an integer, the two round apart
SCHEDULES = {
    "arccos": lambda k, n: math.acos(k / n) / (math.pi / 2),
    "cosine": lambda k, n: math.cos(math.pi / 2 * k / n),
    "linear": lambda k, n: 1.0 - k / n,
}
CFG_SCHEDULES = ("constant", "linear")


def step_sizes(seq_len: int, num_iter: int, schedule: str = "arccos") -> torch.Tensor:
    """Tokens decoded per step ``[S]`` (long, S = min(num_iter, T), each >= 1, summing to T).

    After step s, ``int(T * ratio(s + 1, S))`` positions stay masked, kept between 1 and what the remaining
    steps need (one each); the last step takes the rest. Where ARPG's own rule gives every step a token, this
    is the same schedule; it also stays valid when ``num_iter >= T`` (one token per step).
    """
    if schedule not in SCHEDULES:
        raise ValueError(f"schedule={schedule!r} is not a parallel decoding schedule; choose one of {list(SCHEDULES)}")
    if num_iter < 1:
        raise ValueError(f"num_iter must be >= 1, got {num_iter}")
    steps, ratio = min(num_iter, seq_len), SCHEDULES[schedule]
    sizes, done = [], 0
    for s in range(steps):
        left, after = seq_len - done, steps - s - 1
        n = left if after == 0 else min(max(left - int(seq_len * ratio(s + 1, steps)), 1), left - after)
        sizes.append(n)
        done += n
    return torch.tensor(sizes, dtype=torch.long)


def step_cfg_scales(sizes: torch.Tensor, cfg_scale: float, cfg_schedule: str = "constant") -> torch.Tensor:
    """Guidance scale of each step ``[S]`` fp32: ``constant``, or ``linear``: ``1 + (g - 1) * done / T`` with
    ``done`` the tokens decoded up to and including the step."""
    if cfg_schedule not in CFG_SCHEDULES:
        raise ValueError(f"cfg_schedule={cfg_schedule!r}: choose one of {CFG_SCHEDULES}")
    if cfg_schedule == "constant":
        return torch.full((len(sizes),), float(cfg_scale))
    done = sizes.cumsum(0).double()
    return (1.0 + (float(cfg_scale) - 1.0) * done / float(sizes.sum())).float()


def one_scale(cfg_scale) -> float:
    """A single guidance scale from a float or a constant per-position tensor ``[T]``
    (``rlar.rollout.sampling.cfg_scales``)."""
    values = torch.as_tensor(cfg_scale, dtype=torch.float32).unique()
    if values.numel() != 1:
        raise ValueError("parallel decoding takes one guidance scale, got several per position (rollout.cfg_interval "
                         "is for raster decoding); use rollout.cfg_schedule for a schedule over steps")
    return float(values)


@dataclass
class ParallelSample:
    tokens: torch.Tensor  # [N, T] long, raster order
    logprobs: torch.Tensor  # [N, T] fp32, raster order
    orders: torch.Tensor  # [N, T] long: orders[:, j] is the j-th position decoded
    step_sizes: torch.Tensor  # [S] long: tokens per step, shared by the batch
    cfg_scales: torch.Tensor  # [S] fp32: guidance scale of each step

    @property
    def steps(self) -> torch.Tensor:
        """Decoding steps of each sample ``[N]`` (long): the schedule's length, the same for all."""
        return torch.full((len(self.tokens),), len(self.step_sizes), device=self.tokens.device)

    def schedule(self) -> dict:
        """What :func:`arpg_logprobs` needs besides the tokens, labels and temperature."""
        return {"orders": self.orders, "step_sizes": self.step_sizes, "cfg_scales": self.cfg_scales}


@torch.no_grad()
def sample_parallel(policy: ParallelPolicy, labels: torch.Tensor | None, num_samples: int, num_iter: int = 16,
                    schedule: str = "arccos", temperature: float = 1.0, top_k: int | None = None,
                    top_p: float | None = None, cfg_scale=1.0, cfg_schedule: str = "constant",
                    generator: torch.Generator | None = None, micro_batch_size: int | None = None) -> ParallelSample:
    """Decode ``num_samples`` images with ``policy`` (an :class:`rlar.policy.arpg.ARPG`), ``labels [N]`` (-1 / None:
    the null class). Step s feeds the previous step's codes (the class slot at step 0) at their positions and
    asks the queries of this step's positions; guided rows are doubled (conditional first, then the null class).
    ``micro_batch_size`` rows are decoded at a time (None: all at once); the orders and the uniforms of every
    draw are taken first for all rows, so the samples do not depend on the chunking.
    """
    if temperature <= 0:
        raise ValueError(f"temperature must be > 0, got {temperature}")
    check_labels(policy, labels, num_samples)  # else label C read as the null class, C + 1 an unused embedding
    n, seq_len, device = num_samples, policy.block_size, policy.freqs_cis.device
    sizes = step_sizes(seq_len, num_iter, schedule)
    scales = step_cfg_scales(sizes, one_scale(cfg_scale), cfg_schedule)
    orders = uniforms((n, seq_len), generator, device).argsort(dim=1)  # [N, T]
    draws = step_uniforms(n, sizes.tolist(), generator, device)  # [N, T], step s at its sizes[s] columns
    chunks = [decode_rows(policy, None if labels is None else labels[rows], orders[rows], draws[rows], sizes, scales,
                          temperature, top_k, top_p) for rows in row_chunks(n, micro_batch_size)]
    tokens, logprobs = torch.cat([c[0] for c in chunks]), torch.cat([c[1] for c in chunks])
    return ParallelSample(tokens, logprobs, orders, sizes.to(device), scales.to(device))


def decode_rows(policy: ParallelPolicy, labels: torch.Tensor | None, orders: torch.Tensor, draws: torch.Tensor,
                sizes: torch.Tensor, scales: torch.Tensor, temperature: float, top_k: int | None, top_p: float | None
                ) -> tuple[torch.Tensor, torch.Tensor]:
    """Tokens and log-probs ``[N, T]`` (raster) of ``sample_parallel``'s rows in ``orders [N, T]``, the step
    decoding ``j`` positions drawn at its ``j`` columns of ``draws [N, T]``."""
    (n, seq_len), device = orders.shape, orders.device
    guided = is_guided(scales)
    doubled = (lambda x: torch.cat([x, x])) if guided else (lambda x: x)
    rows_n = 2 * n if guided else n
    model_labels = with_null_class(labels, n, device) if guided else labels
    tokens = torch.zeros(n, seq_len, dtype=torch.long, device=device)
    logprobs = torch.zeros(n, seq_len, dtype=torch.float32, device=device)

    cache = policy.new_cache(rows_n, device, cache_dtype(device))
    ids = policy.class_ids(model_labels, rows_n, device)[:, None]  # [N or 2N, 1]
    rows = torch.zeros_like(ids)  # the class slot's RoPE row
    done = 0
    for s, size in enumerate(sizes.tolist()):
        targets = orders[:, done : done + size]  # [N, n_s] positions decoded now
        logits = policy.decode_step(ids, rows, doubled(1 + targets), cache)  # [N or 2N, n_s, V]
        logp = guided_logprobs(logits, float(scales[s]), temperature, doubled=guided)  # [N, n_s, V]
        u = draws[:, done : done + size].reshape(n * size, 1)
        draw = categorical_at(truncate(logp.flatten(0, 1), top_k, top_p).exp(), u).view(n, size)
        tokens.scatter_(1, targets, draw)
        logprobs.scatter_(1, targets, logp.gather(-1, draw[..., None])[..., 0])
        ids, rows, done = doubled(draw), doubled(1 + targets), done + size
    return tokens, logprobs


@torch.no_grad()
def parallel_generations(policy: ParallelDecoder, start_tokens: StartTokens, max_len: int, num_generations: int,
                         **sampling) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``rlar.rollout.sampling.sample_multiple_generations`` for a parallel decoder: free-running (empty prefix),
    G samples per row adjacent; tokens and log-probs ``[N*G, T]`` and the steps of each sample ``[N*G]``. The
    policy decodes itself: an ARPG with its fixed schedule (``policy.decoding``), a learned schedule
    (``rlar.schedule``) with its network."""
    prefix, labels = split_start_tokens(start_tokens)
    if prefix.shape[1] or max_len != policy.block_size:
        raise ValueError(f"parallel decoding samples whole images from no prefix: got a prefix of {prefix.shape[1]} "
                         f"tokens and max_len={max_len} (block_size={policy.block_size})")
    labels = None if labels is None else labels.repeat_interleave(num_generations)
    n = len(prefix) * num_generations
    sample = policy.decode(labels, n, **sampling)
    return sample.tokens, sample.logprobs, sample.steps


def arpg_logprobs(policy: ParallelPolicy, tokens: torch.Tensor, labels: torch.Tensor | None, orders: torch.Tensor,
                  step_sizes: torch.Tensor, cfg_scales: torch.Tensor, temperature: float = 1.0, hidden: bool = False
                  ) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Teacher-forced log-probs ``[N, T, V]`` (raster) of a parallel sample: one forward pass under its ``orders
    [N, T]`` and step grouping ``step_sizes [S]`` (the sampler's attention, ``rlar.policy.arpg.two_pass_masks``),
    each token under its step's guidance ``cfg_scales [S]`` and the temperature. Differentiable. With
    ``hidden=True`` also the final hidden states ``[N, T, D]`` (conditional rows, raster)."""
    n, seq_len = tokens.shape
    guided = is_guided(cfg_scales)
    if guided:  # the conditional rows, then the same rows with the null class, in the same orders
        labels = with_null_class(labels, n, tokens.device)
        tokens, orders = torch.cat([tokens, tokens]), torch.cat([orders, orders])
    logits, states = policy(tokens, labels, hidden=True, orders=orders, step_sizes=step_sizes)  # [N or 2N, T, .]
    # the scale of each (row, position): that of the step that decoded it, flattened to [N*T]; the logits as
    # [2, N*T, V] (guided halves first) or [N*T, V], so that guided_logprobs broadcasts one scale per token
    step_of = torch.arange(len(step_sizes), device=tokens.device).repeat_interleave(step_sizes)  # [T] decode order
    scale = cfg_scales[step_of][orders[:n].argsort(dim=1)].flatten()  # [N*T] raster
    flat = logits.reshape(2, n * seq_len, -1) if guided else logits.flatten(0, 1)
    logp = guided_logprobs(flat, scale, temperature, doubled=guided).view(n, seq_len, -1)
    if not hidden:
        return logp, None
    return logp, states[:n]
