"""Rollouts: how the actions (image tokens) of one iteration are sampled.

- ``autoregressive``: every token from the policy's own sampled prefix (KV-cached).
- ``prefix``: the first ``prefix_len`` ground-truth tokens are given, the rest sampled autoregressively.
- ``teacher_forced``: each token drawn from the teacher-forced logits on the ground-truth prefix (one
  forward pass), as the LlamaGen GRPO trainer of the seeds does; the update scores it in that same context.
- ``parallel`` (``policy=arpg``): ``num_iter`` steps of several positions each (``schedule``), a random order per
  sample; the rollout keeps the orders and step sizes, and the update scores each token under them.
- ``schedule`` (``policy=arpg``, generator frozen): the decoding schedule is the action. A network
  (``rlar.schedule``) picks at every step how many positions to decode and which; the rollout keeps its per-step
  states and actions, and the update re-scores the schedule (one log-prob per sample) from them.
"""

from __future__ import annotations

import torch

from rlar.contracts import Policy
from rlar.policy.conditioning import Condition, as_condition, class_labels
from rlar.rollout.draws import categorical_at, uniforms
from rlar.rollout.parallel_decoding import sample_parallel
from rlar.rollout.sampling import cfg_scales, policy_logprobs, sample_multiple_generations, truncate
from rlar.rollout.types import Rollout

MODES = ("autoregressive", "prefix", "teacher_forced", "parallel", "schedule")


def noisy_context(codes: torch.Tensor, prob: float, vocab_size: int, generator: torch.Generator) -> torch.Tensor:
    """``codes [B, T]`` with each token replaced, with probability ``prob``, by a code drawn uniformly from the
    vocabulary (VA-pi's noisy teacher-forcing context)."""
    if not prob:
        return codes
    replace = uniforms(codes.shape, generator, codes.device) < prob
    random_codes = torch.randint(vocab_size, codes.shape, generator=generator)
    return torch.where(replace, random_codes.to(codes.device), codes)


def drop_labels(labels: Condition | torch.Tensor | None, prob: float, generator: torch.Generator
                ) -> Condition | torch.Tensor | None:
    """``labels [B]`` (or a Condition) with each replaced by the null condition (the null class -1, the null caption),
    with probability ``prob`` (classifier-free dropout)."""
    if not prob or labels is None:
        return labels
    if isinstance(labels, Condition):
        return labels.dropped(uniforms((len(labels),), generator, labels.device) < prob)
    drop = uniforms(labels.shape, generator, labels.device) < prob
    return torch.where(drop, torch.full_like(labels, -1), labels)


def teacher_forced_draws(logp: torch.Tensor, g: int, top_k: int | None, top_p: float | None,
                         generator: torch.Generator | None) -> torch.Tensor:
    """``g`` draws ``[B, G, T]`` at each position of the log-probs ``logp [B, T, V]``, each from its (truncated)
    distribution: one CDF per position read at ``g`` uniforms, never ``g`` copies of the logits. The uniforms are
    those ``g`` adjacent copies of each row would read, row after row."""
    b, t_len, _ = logp.shape
    probs = truncate(logp.flatten(0, 1), top_k, top_p).exp()  # [B*T, V]
    u = uniforms((b * g * t_len, 1), generator, logp.device).view(b, g, t_len).transpose(1, 2)  # [B, T, G]
    return categorical_at(probs, u.reshape(b * t_len, g)).view(b, t_len, g).transpose(1, 2)


@torch.no_grad()
def collect_rollout(policy: Policy, gt_codes: torch.Tensor | None, labels: Condition | torch.Tensor | None,
                    num_generations: int, rollout_cfg, generator: torch.Generator) -> Rollout:
    """G samples for each of the B items: a ``Rollout`` of ``B*G`` rows, the G of an item adjacent.

    gt_codes ``[B, T]`` are the tokenizer's codes of the input images (the context of the prefix and
    teacher-forced modes), or None for items without images (prompt-only data: the free-running modes only, B from
    ``labels``, no targets); ``labels``: the items' conditions (a ``Condition``: class labels or caption features,
    or a label tensor ``[B]``). Condition dropout and the noisy context are drawn once per item and stored in the
    rollout, so the update and KL passes read exactly what the rollout read.
    """
    mode, g = rollout_cfg.mode, num_generations
    if gt_codes is None and (mode in ("prefix", "teacher_forced") or labels is None):
        raise ValueError(f"rollout.mode={mode!r} reads the input images' codes, and these items have none (data "
                         "without images); use rollout.mode=autoregressive (or parallel, schedule)")
    b, t_len = (len(labels), policy.block_size) if gt_codes is None else gt_codes.shape
    scales = cfg_scales(t_len, rollout_cfg.cfg_scale, rollout_cfg.cfg_interval)
    labels = drop_labels(as_condition(labels), rollout_cfg.label_dropout, generator)
    rep = None if labels is None else labels.repeat_interleave(g)  # [B*G] conditions
    context = targets = given = None  # without images: nothing given, no ground truth
    if gt_codes is not None:
        context = noisy_context(gt_codes, rollout_cfg.token_noise_prob, policy.vocab_size, generator)  # [B, T]
        targets, given = gt_codes.repeat_interleave(g, 0), context.repeat_interleave(g, 0)  # [B*G, T]
    if mode in ("autoregressive", "prefix"):
        k = rollout_cfg.prefix_len if mode == "prefix" else 0
        prefix = (torch.zeros(b, 0, dtype=torch.long, device=labels.device) if gt_codes is None
                  else context[:, :k])  # [B, k]: the ground truth's first k codes, noised as the context is
        tokens, logprobs = sample_multiple_generations(
            policy, (prefix, labels), t_len, g, temperature=rollout_cfg.temperature, top_k=rollout_cfg.top_k,
            top_p=rollout_cfg.top_p, cfg_scale=scales, generator=generator,
            micro_batch_size=rollout_cfg.micro_batch_size,
        )  # [B*G, T]
        mask = (torch.arange(t_len, device=tokens.device) >= k)[None].expand(b * g, t_len)
        return Rollout(tokens, tokens, logprobs, rep, mask, targets, given)
    if mode == "teacher_forced":
        logp, _ = policy_logprobs(policy, context, labels, rollout_cfg.temperature, scales)  # [B, T, V]
        actions = teacher_forced_draws(logp, g, rollout_cfg.top_k, rollout_cfg.top_p, generator)  # [B, G, T]
        logprobs = logp[:, None].expand(-1, g, -1, -1).gather(-1, actions[..., None])[..., 0]  # [B, G, T]
        actions, logprobs = actions.flatten(0, 1), logprobs.flatten(0, 1)  # [B*G, T]
        mask = torch.ones_like(actions, dtype=torch.bool)
        return Rollout(context.repeat_interleave(g, 0), actions, logprobs, rep, mask, targets)
    if mode in ("parallel", "schedule"):
        rep_labels = class_labels(rep, "policy=arpg")  # [B*G]: ARPG is class-conditional
    if mode == "parallel":
        sample = sample_parallel(
            policy, rep_labels, b * g, num_iter=rollout_cfg.num_iter, schedule=rollout_cfg.schedule,
            temperature=rollout_cfg.temperature, top_k=rollout_cfg.top_k, top_p=rollout_cfg.top_p,
            cfg_scale=rollout_cfg.cfg_scale, cfg_schedule=rollout_cfg.cfg_schedule, generator=generator,
            micro_batch_size=rollout_cfg.micro_batch_size,
        )  # tokens, logprobs, orders [B*G, T]
        mask = torch.ones_like(sample.tokens, dtype=torch.bool)
        return Rollout(sample.tokens, sample.tokens, sample.logprobs, rep, mask, targets, given,
                       schedule=sample.schedule(), steps=sample.steps)
    if mode == "schedule":  # policy: an rlar.schedule.decoder.ScheduleDecoder
        sample = policy.decode(rep_labels, b * g, temperature=rollout_cfg.temperature, top_k=rollout_cfg.top_k,
                               top_p=rollout_cfg.top_p, cfg_scale=rollout_cfg.cfg_scale, generator=generator,
                               group_size=g)
        mask = torch.ones(b * g, 1, dtype=torch.bool, device=sample.tokens.device)
        return Rollout(sample.tokens, sample.tokens, sample.schedule_logprob[:, None], rep, mask, targets,
                       steps=sample.steps, trace=sample.trace)
    raise ValueError(f"rollout.mode must be one of {MODES}, got {mode!r}")
