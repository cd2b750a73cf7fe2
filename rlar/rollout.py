"""Rollouts: how the actions (image tokens) of one iteration are sampled.

- ``autoregressive``: every token from the policy's own sampled prefix (KV-cached).
- ``prefix``: the first ``prefix_len`` ground-truth tokens are given, the rest sampled autoregressively.
- ``teacher_forced``: each token drawn from the teacher-forced logits on the ground-truth prefix (one
  forward pass), as the LlamaGen GRPO trainer of the seeds does; the update scores it in that same context.
"""

from __future__ import annotations

import torch

from rlar.algorithm.update import Rollout
from rlar.sampling import cfg_scales, policy_logprobs, sample_multiple_generations, truncate

MODES = ("autoregressive", "prefix", "teacher_forced")


@torch.no_grad()
def collect_rollout(policy, gt_codes: torch.Tensor, labels: torch.Tensor | None, num_generations: int, rollout_cfg,
                    generator: torch.Generator) -> Rollout:
    """G samples for each of the B items: a ``Rollout`` of ``B*G`` rows, the G of an item adjacent.

    gt_codes ``[B, T]`` are the tokenizer's codes of the input images (the context of the prefix and
    teacher-forced modes).
    """
    mode, g = rollout_cfg.mode, num_generations
    b, t_len = gt_codes.shape
    scales = cfg_scales(t_len, rollout_cfg.cfg_scale, rollout_cfg.cfg_interval)
    rep_labels = None if labels is None else labels.repeat_interleave(g)
    if mode in ("autoregressive", "prefix"):
        k = rollout_cfg.prefix_len if mode == "prefix" else 0
        tokens, logprobs = sample_multiple_generations(
            policy, (gt_codes[:, :k], labels), t_len, g, temperature=rollout_cfg.temperature, top_k=rollout_cfg.top_k,
            top_p=rollout_cfg.top_p, cfg_scale=scales, generator=generator,
        )  # [B*G, T]
        mask = (torch.arange(t_len, device=tokens.device) >= k)[None].expand(b * g, t_len)
        return Rollout(tokens, tokens, logprobs, rep_labels, mask)
    if mode == "teacher_forced":
        logp, _ = policy_logprobs(policy, gt_codes, labels, rollout_cfg.temperature, scales)  # [B, T, V]
        logp = logp.repeat_interleave(g, 0)  # [B*G, T, V]
        draw = truncate(logp.flatten(0, 1), rollout_cfg.top_k, rollout_cfg.top_p).exp()
        actions = torch.multinomial(draw, 1, generator=generator).view(b * g, t_len)
        logprobs = logp.gather(-1, actions[..., None])[..., 0]
        context = gt_codes.repeat_interleave(g, 0)
        return Rollout(context, actions, logprobs, rep_labels, torch.ones_like(actions, dtype=torch.bool))
    raise ValueError(f"rollout.mode must be one of {MODES}, got {mode!r}")
