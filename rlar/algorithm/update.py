"""The update skeleton every algorithm shares: inner epochs over group-preserving minibatches."""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import math
from collections import defaultdict
from typing import TYPE_CHECKING

import torch

from rlar.algorithm.algorithms import PPO
from rlar.algorithm.gae import gae_terminal_reward
from rlar.algorithm.kl import token_kl
from rlar.algorithm.losses import aggregate
from rlar.contracts import Algorithm, TokenPolicy
from rlar.rollout.parallel_decoding import arpg_logprobs
from rlar.rollout.sampling import policy_logprobs
from rlar.runtime import distributed
from rlar.runtime.data_parallel import gradient_sync

log = logging.getLogger(__name__)

if TYPE_CHECKING:
    from rlar.rollout.types import Rollout


def groups_per_minibatch(group_size: int, minibatch_size: int) -> int:
    return max(1, minibatch_size // group_size)


def group_minibatches(n: int, group_size: int, minibatch_size: int, generator: torch.Generator):
    """Shuffled index minibatches of ``minibatch_size`` that never split a group of ``group_size`` rows."""
    groups = torch.randperm(n // group_size, generator=generator)
    per_batch = groups_per_minibatch(group_size, minibatch_size)
    for i in range(0, len(groups), per_batch):
        g = groups[i : i + per_batch]
        yield (g[:, None] * group_size + torch.arange(group_size)).flatten()


def _rows(rollout: Rollout, idx: torch.Tensor):
    labels = None if rollout.condition is None else rollout.condition[idx]
    schedule = None if rollout.schedule is None else {**rollout.schedule, "orders": rollout.schedule["orders"][idx]}
    return rollout.context[idx], rollout.tokens[idx], labels, schedule


def rollout_logprobs(policy, context: torch.Tensor, labels, sampling: dict, schedule: dict | None,
                     hidden: bool = False):
    """``policy_logprobs``, or for a parallel rollout the recompute under its orders, step grouping and guidance
    per step (``arpg_logprobs``; the temperature is ``sampling``'s)."""
    if schedule is None:
        return policy_logprobs(policy, context, labels, **sampling, hidden=hidden)
    return arpg_logprobs(policy, context, labels, **schedule, temperature=sampling["temperature"], hidden=hidden)


def update_passes(policy, rollout: Rollout, sampling: dict, autocast, size: int, hidden: bool = False):
    """The update's forward pass over the rollout's rows, ``size`` at a time (under ``autocast``; None: none):
    ``(idx [n], tokens [n, T], log-probs [n, T, V], final hidden states [n, T, D] or None)`` per minibatch."""
    autocast = autocast or contextlib.nullcontext
    for idx in torch.arange(len(rollout.tokens)).split(size):
        context, tokens, labels, schedule = _rows(rollout, idx)
        with autocast():
            logp_all, states = rollout_logprobs(policy, context, labels, sampling, schedule, hidden=hidden)
        yield idx, tokens, logp_all, states


@torch.no_grad()
def value_advantages(policy: TokenPolicy, critic, algorithm: PPO, rollout: Rollout, rewards: torch.Tensor,
                     sampling: dict, autocast=None, token_rewards: torch.Tensor | None = None):
    """GAE from the critic's values at rollout time, normalized over the global batch's action tokens (every
    process's): (advantages ``[N, T]``, returns ``[N, T]``); the values are kept in ``rollout.values`` (the value
    loss's clipping reads them). ``rewards [N]`` are paid at the last token, ``token_rewards [N, T]`` (None: none) at
    each (``kl_penalty=reward``: -beta x each token's log-ratio to the prior). The hidden states come from the update's
    pass (under its ``autocast``), in minibatches of ``algorithm.minibatch_size`` rows: never the logits of the whole
    rollout."""
    values = torch.zeros_like(rollout.logprobs)  # [N, T]
    for idx, _, _, hidden in update_passes(policy, rollout, sampling, autocast, algorithm.minibatch_size, hidden=True):
        values[idx] = critic(hidden.float())[..., 0]
    rollout.values = values
    mask = rollout.mask & rewards.isfinite()[:, None]
    if token_rewards is not None:
        token_rewards = torch.where(mask, token_rewards, 0.0)  # a row left out pays nothing, not a NaN
    adv, returns = gae_terminal_reward(values, rewards.nan_to_num(0.0), mask, algorithm.gamma, algorithm.gae_lambda,
                                       token_rewards)
    mean, std = distributed.mean_std_over_ranks(adv[mask])  # over the global batch, as one process would
    adv = torch.where(mask, (adv - mean) / (std + 1e-8), 0.0)
    return adv, returns


def recomputes_old_logprobs(old_logprobs: str, precision: str) -> bool:
    """``algorithm.old_logprobs``: ``recompute``, or ``auto`` under bf16 autocast, where the sampler's KV-cached
    log-probs differ from the update's by ~1e-2 (in fp32 by ~1e-6)."""
    return old_logprobs == "recompute" or (old_logprobs == "auto" and precision == "bf16")


def update_recomputes(algorithm, precision: str) -> bool:
    """Whether the update recomputes the old log-probs (:func:`recomputes_old_logprobs`) for ``algorithm``: not by
    default (``auto``) for a loss without a ratio (``reads_old_logprobs`` False: REINFORCE), unless
    ``sampler_correction_cap`` weighs by them; ``recompute`` asked for (its diagnostic) always."""
    needed = (getattr(algorithm, "reads_old_logprobs", True) or algorithm.old_logprobs == "recompute"
              or getattr(algorithm, "sampler_correction_cap", None) is not None)
    return needed and recomputes_old_logprobs(algorithm.old_logprobs, precision)


@torch.no_grad()
def recomputed_logprobs(policy, rollout: Rollout, sampling: dict, autocast, minibatch_size: int) -> torch.Tensor:
    """``[N, T]`` log-probs of the rollout's actions under the update's own forward pass (teacher-forced, in
    minibatches of ``minibatch_size`` rows), 0 where a token is not an action: the ratio's old log-probs then
    differ from the new ones only by what the update changed, not by the sampler's numerics (KV cache, bf16)."""
    old = torch.zeros_like(rollout.logprobs)
    for idx, tokens, logp_all, _ in update_passes(policy, rollout, sampling, autocast, minibatch_size):
        logp = logp_all.gather(-1, tokens[..., None])[..., 0].float()  # [n, T]
        old[idx] = torch.where(rollout.mask[idx], logp, 0.0)
    return old


@torch.no_grad()
def reward_kl(ref_policy, rollout: Rollout, sampling: dict, autocast, minibatch_size: int, policy=None
              ) -> torch.Tensor:
    """``[N, T]``: each action's log-ratio to the frozen prior, ``log pi(a_t) - log pi_ref(a_t)`` under the same
    sampling, 0 off the actions; summed over a sample's actions, the KL that ``algorithm.kl_penalty=reward`` takes
    from its reward. The policy's log-probs are the sampler's, or with ``policy`` its teacher-forced pass's, as the
    prior's are (under bf16 the KV-cached sampler rounds ~1e-2 per token apart, and the sum over T tokens grows with
    it); that pass is kept in ``rollout.update_logprobs``, where the update reads it as its recomputed old
    log-probs."""
    ref = recomputed_logprobs(ref_policy, rollout, sampling, autocast, minibatch_size)  # [N, T], 0 off the actions
    own = rollout.logprobs
    if policy is not None:
        own = rollout.update_logprobs = recomputed_logprobs(policy, rollout, sampling, autocast, minibatch_size)
    return torch.where(rollout.mask, own - ref, 0.0)


def sampler_correction(old: torch.Tensor, sampler: torch.Tensor, mask: torch.Tensor, cap: float
                       ) -> tuple[torch.Tensor, dict[str, float]]:
    """Truncated importance weights of the sampler/trainer mismatch, ``min(pi_update(a) / pi_sampler(a), cap)`` per
    action token (``old``: the update's recomputed log-probs, ``sampler``: the rollout's, ``mask``: ``[N, T]``; 1 off
    the actions): the samples were drawn from the sampler's distribution, the loss is taken under the update's. Returns
    ``(weights [N, T], stats)``: their mean and the share of action tokens capped."""
    raw = (old - sampler).exp()  # [N, T]
    weights = torch.where(mask, raw.clamp(max=cap), 1.0)
    acted = mask.any()
    return weights, {"policy/sampler_correction": float(weights[mask].mean()) if acted else 1.0,
                     "policy/sampler_correction_capped": float((raw > cap)[mask].float().mean()) if acted else 0.0}


def per_token(adv: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    """Advantages ``[N]`` or ``[N, T]`` times per-token ``weights [N, T]`` (>= 0): ``[N, T]``. Every loss here is
    linear in each token's advantage up to a sign the weight keeps (the clipped surrogate's max included), so this
    weighs each token's loss."""
    return (adv[:, None] if adv.dim() == 1 else adv) * weights


def high_entropy_tokens(entropy: torch.Tensor, mask: torch.Tensor, quantile: float) -> torch.Tensor:
    """``[n, T]`` bool: the action tokens (``mask``) whose ``entropy`` is at least the ``1 - quantile`` quantile of the
    action tokens' entropies in this minibatch, the top ``quantile`` share (ties kept)."""
    entropy = entropy.detach()
    acted = entropy[mask].float()
    if not acted.numel():
        return mask
    return mask & (entropy >= torch.quantile(acted, 1 - quantile))


def finite_rows(idx: torch.Tensor, nonfinite: torch.Tensor | None) -> torch.Tensor:
    """The rows of minibatch ``idx`` not drawn from non-finite logits (``nonfinite [N]`` on the CPU): on the same
    weights their forward pass is non-finite again, and its backward NaN even where their loss terms are masked out.
    All of ``idx`` where none would be left (the NaN gradient then skips the step, with a warning). Their weights
    (:func:`minibatch_weights`) still count the rows left out, as rows that add nothing."""
    if nonfinite is None:
        return idx
    kept = idx[~nonfinite[idx]]
    return kept if len(kept) else idx


def accumulation_window(count: int, total: int, grad_accum: int) -> int:
    """The minibatches whose gradients the optimizer step of minibatch ``count`` (1-based, of ``total``) averages:
    ``grad_accum``, or fewer in a last, partial window (fewer minibatches on this rank than ``grad_accum``, e.g. a
    recipe for 8 GPUs run on 16), so that every step sees a mean gradient."""
    start = (count - 1) // grad_accum * grad_accum
    return min(grad_accum, total - start)


def minibatch_weights(mask: torch.Tensor, minibatches: list[torch.Tensor], accum: int,
                      kept: list[torch.Tensor] | None = None) -> list[tuple[float, float]]:
    """``(scored, rows)`` per minibatch: the weights of its loss terms within its optimizer step, so that every sample
    of the step counts alike wherever it fell. A term that is a mean over the minibatch's scored rows (tokens with
    an action: ``mask [N, T]``; the surrogate, entropy, KL and value terms) takes ``scored``; a mean over all its rows
    (the next-token term; the surrogate of ``constant`` aggregation and REINFORCE) takes ``rows``. Each is the
    minibatch's share of the step's count over every process (the gradients are averaged over processes), times the
    minibatches the step averages and the processes: exactly 1 where the minibatches hold alike; less for one that
    lost rows (a non-finite reward, a dropped group) or a last, smaller one. ``kept``: the rows of each minibatch the
    update runs (:func:`finite_rows`); a row left out counts in ``rows`` as one that adds nothing, as a masked row
    does (a mean over the rows present, times ``rows``, is then the sum over the step's rows)."""
    if not minibatches:
        return []
    kept = minibatches if kept is None else kept
    n = len(minibatches)
    counts = torch.tensor([[float(mask[idx].any(1).sum()), float(len(idx))] for idx in minibatches],
                          dtype=torch.float64, device=mask.device)  # [n, 2]: scored rows, rows
    windows = torch.arange(n, device=mask.device) // accum  # [n]: the optimizer step of each
    per_step = counts.new_zeros(int(windows[-1]) + 1, 2).index_add_(0, windows, counts)  # [steps, 2], this process
    totals = distributed.sum_over_ranks(per_step)[windows]  # [n, 2]: its step's counts over every process
    averaged = counts.new_tensor([accumulation_window(c, n, accum) for c in range(1, n + 1)])  # [n]: per step
    present = counts.new_tensor([[1.0, len(rows) / len(idx)] for rows, idx in zip(kept, minibatches, strict=True)])
    weights = counts * present * (averaged * distributed.world_size())[:, None] / totals  # [n, 2]
    return [tuple(pair) for pair in torch.where(totals > 0, weights, 0.0).tolist()]


def weighted(term: torch.Tensor, weight: float) -> torch.Tensor:
    """``term * weight``; ``term`` itself at weight 1, so that equal minibatches compute what they always did."""
    return term if weight == 1.0 else term * weight


def step_kl(kls: list[float], weights: list[float], device) -> float:
    """The mean approx_kl an optimizer step's minibatches measured (``kls``, each a mean over its scored tokens),
    weighted by their ``scored`` weights (:func:`minibatch_weights`), over every process: the same on every rank;
    0 where none scored a row."""
    weighted_kl = sum(k * w for k, w in zip(kls, weights, strict=True))
    sums = torch.tensor([weighted_kl, sum(weights)], dtype=torch.float64, device=device)
    total, weight = distributed.sum_over_ranks(sums).tolist()
    return total / weight if weight > 0 else 0.0


def stepped_params(optimizer) -> list:
    """Every parameter ``optimizer`` steps (what its gradient norm is clipped over)."""
    return [p for group in optimizer.param_groups for p in group["params"]]


def clip_and_step(params: list, optimizer, max_grad_norm: float | None) -> float:
    """Clip the gradient norm (when ``max_grad_norm`` is set), step, clear; returns the norm before clipping. A
    gradient that is not finite is not stepped (the weights stay finite; a warning says so): the norm is the
    global one under DDP and FSDP2, so every process skips the same step."""
    grad_norm = torch.nn.utils.clip_grad_norm_(params, max_grad_norm or float("inf"))
    norm = float(grad_norm.full_tensor() if hasattr(grad_norm, "full_tensor") else grad_norm)  # FSDP2: a DTensor
    if math.isfinite(norm):
        optimizer.step()
    else:
        log.warning("the gradient norm is %s: this optimizer step is skipped and the weights are left as they were "
                    "(a lower optimizer.lr, train.max_grad_norm or rollout.temperature closer to 1 avoids it)", norm)
    optimizer.zero_grad(set_to_none=True)
    return norm


def next_token_ce(policy, rollout: Rollout, idx: torch.Tensor, logp_all: torch.Tensor, labels, sampling: dict,
                  autocast) -> torch.Tensor:
    """Mean cross-entropy of the ground-truth codes of rows ``idx`` over all T positions, under the distribution
    the surrogate uses. Teacher-forced rollouts already read the ground-truth context: their log-probs
    ``logp_all [n, T, V]`` are reused (one forward pass for both terms); others need a pass over it."""
    if rollout.targets is None:
        raise ValueError("algorithm.ntp_weight > 0 needs the ground-truth codes in the rollout (rollout.targets)")
    if rollout.target_context is not None:
        with autocast():
            logp_all, _ = policy_logprobs(policy, rollout.target_context[idx], labels, **sampling)
    return -logp_all.gather(-1, rollout.targets[idx][..., None]).mean()


def value_error(values: torch.Tensor, returns: torch.Tensor, rollout: Rollout, idx: torch.Tensor, mask: torch.Tensor,
                clip: float | None) -> tuple[torch.Tensor, dict[str, float]]:
    """The value loss of rows ``idx``: ``0.5 * (V - R)^2`` over their action tokens (``values``, ``returns``, ``mask``
    ``[n, T]``); with ``clip``, the larger of that and the error of ``V`` kept within ``clip`` of its rollout-time value
    (``rollout.values``), so one update cannot move a value far."""
    error = (values - returns) ** 2  # [n, T]
    if clip is None:
        loss = 0.5 * aggregate(error, mask, "token")
        return loss, {"loss/value": loss.item()}
    if rollout.values is None:
        raise ValueError("algorithm.value_clip reads the critic's rollout-time values (rollout.values): compute the "
                         "advantages with rlar.algorithm.update.value_advantages first")
    old = rollout.values[idx]
    clipped = (old + (values - old).clamp(-clip, clip) - returns) ** 2
    loss = 0.5 * aggregate(torch.maximum(error, clipped), mask, "token")
    moved = ((values - old).abs() > clip)[mask.bool()].float()
    return loss, {"loss/value": loss.item(), "policy/value_clipfrac": float(moved.mean()) if moved.numel() else 0.0}


def minibatch_loss(policy, algorithm: Algorithm, rollout: Rollout, adv: torch.Tensor, idx: torch.Tensor, sampling: dict,
                   autocast, ref_policy=None, critic=None, returns: torch.Tensor | None = None,
                   weights: tuple[float, float] = (1.0, 1.0)):
    """The loss of the rows ``idx`` (policy surrogate, entropy bonus, KL to the prior, value loss, next-token term)
    and its stats (unweighted). ``weights``: the ``(scored, rows)`` weights of its terms (:func:`minibatch_weights`)."""
    scored, rows = weights
    context, tokens, labels, schedule = _rows(rollout, idx)
    mask = rollout.mask[idx]
    if rollout.trace is not None:  # a learned schedule (rlar.schedule.decoder.ScheduleDecoder): its trace re-scored
        with autocast():  # as in the rollout
            logp, entropy = policy(rollout.trace.rows(idx))  # [n, 1] each: one action per sample
    else:
        with autocast():
            logp_all, hidden = rollout_logprobs(policy, context, labels, sampling, schedule,
                                                hidden=critic is not None)
        logp = logp_all.gather(-1, tokens[..., None])[..., 0]  # [n, T]
        with torch.set_grad_enabled(torch.is_grad_enabled() and bool(algorithm.entropy_coef)):  # else a statistic
            entropy = -(logp_all.exp() * logp_all).sum(-1)  # [n, T]
    rows_adv = adv[idx]  # [n] or [n, T]
    quantile = getattr(algorithm, "top_entropy_quantile", 1.0)
    if quantile < 1:  # the policy loss reads only the minibatch's highest-entropy action tokens
        rows_adv = per_token(rows_adv, high_entropy_tokens(entropy, mask, quantile).float())
    loss, stats = algorithm.loss(logp, rollout.logprobs[idx], rows_adv, mask)
    stats["loss/policy"] = loss.item()
    loss = weighted(loss, scored if getattr(algorithm, "aggregation", None) in ("token", "sequence") else rows)
    if algorithm.entropy_coef:
        loss = loss - weighted(algorithm.entropy_coef * aggregate(entropy, mask, "token"), scored)
    if ref_policy is not None:
        with torch.no_grad(), autocast():
            ref_all, _ = rollout_logprobs(ref_policy, context, labels, sampling, schedule)
        kl = aggregate(token_kl(algorithm.kl_estimator, logp_all, ref_all, tokens), mask, "token")
        loss = loss + weighted(algorithm.beta * kl, scored)
        stats["loss/kl"] = kl.item()
    if critic is not None:
        trunk = hidden.detach() if getattr(algorithm, "value_detach", False) else hidden  # [n, T, D]
        values = critic(trunk.float())[..., 0]  # [n, T]
        value_loss, value_stats = value_error(values, returns[idx], rollout, idx, mask,
                                              getattr(algorithm, "value_clip", None))
        loss = loss + weighted(algorithm.vf_coef * value_loss, scored)
        stats.update(value_stats)
    if algorithm.ntp_weight:
        ntp = next_token_ce(policy, rollout, idx, logp_all, labels, sampling, autocast)
        loss = loss + weighted(algorithm.ntp_weight * ntp, rows)
        stats["loss/ntp"] = ntp.item()
    stats["policy/entropy"] = float(entropy.detach()[mask].mean()) if mask.any() else 0.0
    return loss, stats


ALL_ROWS_STATS = ("loss/ntp",)  # the stats of a minibatch over every row; the others are over its scored tokens


class MinibatchStats:
    """The update's stats: each the mean over every process's minibatches that measured it (one without a scored
    row, whose rows a non-finite reward or a dropped group left out, measures only :data:`ALL_ROWS_STATS`), 0 where
    none did; ``policy/ratio_max_abs_dev`` this process's, from its first minibatch with a scored row before any
    optimizer step (else its first's)."""

    def __init__(self):
        self.sums: dict[str, float] = defaultdict(float)
        self.seen: dict[str, int] = defaultdict(int)
        self.ratio_dev, self.ratio_scored = None, False

    def add(self, stats: dict[str, float], scored: bool, before_step: bool) -> None:
        for key, value in stats.items():  # every key, so that every rank reports the same ones
            counts = scored or key in ALL_ROWS_STATS
            self.sums[key] += value if counts else 0.0
            self.seen[key] += counts
        if self.ratio_dev is None or (scored and before_step and not self.ratio_scored):
            self.ratio_dev, self.ratio_scored = stats.get("policy/ratio_max_abs_dev"), scored

    def means(self, device) -> dict[str, float]:
        """Collective under torchrun: every process has run as many minibatches, with the same keys."""
        keys = sorted(self.sums)
        counted = torch.tensor([[self.sums[key], self.seen[key]] for key in keys], dtype=torch.float64,
                               device=device).reshape(len(keys), 2)  # [K, 2]: the sum of each stat, its minibatches
        totals = distributed.sum_over_ranks(counted).tolist()
        out = {key: total / seen if seen else 0.0 for key, (total, seen) in zip(keys, totals, strict=True)}
        if self.ratio_dev is not None:
            out["policy/ratio_max_abs_dev"] = self.ratio_dev
        return out


def policy_update(policy, optimizer, algorithm: Algorithm, rollout: Rollout, adv: torch.Tensor, sampling: dict,
                  max_grad_norm: float | None, generator: torch.Generator, autocast=None, ref_policy=None,
                  critic=None, returns: torch.Tensor | None = None, recompute: bool = False) -> dict[str, float]:
    """``algorithm.epochs`` passes over group-preserving minibatches; an optimizer step every
    ``algorithm.grad_accum`` minibatches (once per rollout for an algorithm that ``steps_once``: REINFORCE), each
    minibatch's terms weighted by its share of the step's samples (:func:`minibatch_weights`). ``adv``: ``[N]`` or
    ``[N, T]``. Returns mean stats: over minibatches (:class:`MinibatchStats`), ``policy/grad_norm`` over optimizer
    steps (before clipping).
    With ``algorithm.target_kl``, an optimizer step whose minibatches measured a larger mean approx_kl (the policy
    as the steps before left it, against the rollout's) is not taken and the update ends there (``policy/kl_stopped``
    1; ``policy/minibatches`` counts those run); the first step, which measures ~0, is always taken.

    ``recompute``: the ratio's old log-probs are :func:`recomputed_logprobs` (``rollout.update_logprobs`` where
    already computed; ``policy/sampler_logprob_dev``: their largest difference from the sampler's), not the
    sampler's; with ``algorithm.sampler_correction_cap``, each token's loss is weighted by :func:`sampler_correction`.
    ``policy/ratio_max_abs_dev`` is measured on the first minibatch with a scored row before any step: it must be
    ~0. ``policy`` and ``critic`` may be DDP/FSDP2-wrapped: gradients are all-reduced only in the backward pass that
    precedes an optimizer step.
    """
    policy.train()
    autocast = autocast or contextlib.nullcontext
    sampler_dev, correction = None, {}
    if recompute and rollout.trace is None:  # a learned schedule's actions are scored by its own small network
        if rollout.update_logprobs is not None:  # computed on these weights before the update (kl_penalty=reward)
            old = torch.where(rollout.mask, rollout.update_logprobs, 0.0)  # the rows scored since
            rollout.update_logprobs = None  # read once: after this update they are an older policy's
        else:
            old = recomputed_logprobs(policy, rollout, sampling, autocast, algorithm.minibatch_size)
        sampler_dev = float((old - rollout.logprobs)[rollout.mask].abs().max()) if rollout.mask.any() else 0.0
        cap = getattr(algorithm, "sampler_correction_cap", None)
        if cap is not None:  # the samples came from the sampler's numerics: each token's loss reweighted
            weights, correction = sampler_correction(old, rollout.logprobs, rollout.mask, cap)
            adv = per_token(adv, weights)
        rollout = dataclasses.replace(rollout, logprobs=old)
    measured = MinibatchStats()
    params = stepped_params(optimizer)
    nonfinite = None if rollout.nonfinite is None else rollout.nonfinite.cpu()
    drawn = [idx for _ in range(algorithm.epochs)
             for idx in group_minibatches(len(adv), algorithm.num_generations, algorithm.minibatch_size, generator)]
    minibatches = [finite_rows(idx, nonfinite) for idx in drawn]
    total = len(minibatches)
    # minibatches per optimizer step (an algorithm class of one's own without steps_once steps every grad_accum)
    accum = total if getattr(algorithm, "steps_once", False) else algorithm.grad_accum
    weights = minibatch_weights(rollout.mask, drawn, accum, minibatches)
    target_kl = getattr(algorithm, "target_kl", None)
    count, norms, kls, stopped = 0, [], [], False  # norms: the gradient norm of each optimizer step
    optimizer.zero_grad(set_to_none=True)
    for idx, weight in zip(minibatches, weights, strict=True):
        count += 1
        ends_step = count % accum == 0 or count == total  # a last, partial accumulation still counts
        window = accumulation_window(count, total, accum)
        with gradient_sync((policy, critic), enabled=ends_step):  # forward and backward inside
            loss, stats = minibatch_loss(policy, algorithm, rollout, adv, idx, sampling, autocast, ref_policy,
                                         critic, returns, weight)
            (loss / window).backward()
        measured.add(stats, bool(rollout.mask[idx].any()), before_step=count <= accum)
        kls.append(stats.get("policy/approx_kl", 0.0))
        if not ends_step:
            continue
        step_weights = [scored for scored, _ in weights[count - len(kls):count]]
        # never the first step: it measures the rollout's own policy (~0; the sampler's rounding under bf16)
        stopped = (target_kl is not None and count > accum
                   and step_kl(kls, step_weights, rollout.mask.device) > target_kl)
        if stopped:  # the policy has moved far enough from the rollout's: this step is not taken, the update ends
            optimizer.zero_grad(set_to_none=True)
            break
        norms.append(clip_and_step(params, optimizer, max_grad_norm))
        kls = []
    out = measured.means(rollout.mask.device)
    if norms:
        out["policy/grad_norm"] = sum(norms) / len(norms)
    out["policy/minibatches"] = float(count)
    if target_kl is not None:
        out["policy/kl_stopped"] = float(stopped)
    if sampler_dev is not None:
        out["policy/sampler_logprob_dev"] = sampler_dev
    return {**out, **correction}
