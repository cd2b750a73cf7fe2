"""``Rollout``: one iteration's sampled sequences, the data every stage after sampling reads."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch

from rlar.policy.conditioning import Condition, as_condition

if TYPE_CHECKING:
    from rlar.schedule.sampler import ScheduleTrace


@dataclass
class Rollout:
    """One iteration's samples: G generations per item, adjacent."""

    context: torch.Tensor  # [N, T] long: the tokens the policy reads (== tokens, except teacher-forced rollouts)
    tokens: torch.Tensor  # [N, T] long: the actions
    logprobs: torch.Tensor  # [N, T] fp32, log-prob of each action at sampling time (0 where not an action)
    # [N] class labels (negative: the null class) or caption features, or None; a label tensor is wrapped
    condition: Condition | torch.Tensor | None
    mask: torch.Tensor  # [N, T] bool, True where the token is an action (sampled, not given)
    targets: torch.Tensor | None = None  # [N, T] long: the ground-truth codes, for the NTP term
    # [N, T] long: the (noisy) ground-truth context the NTP term reads; None: ``context`` (teacher-forced rollouts)
    target_context: torch.Tensor | None = None
    # parallel rollouts (ARPG): orders [N, T], step_sizes [S], cfg_scales [S] (rlar.rollout.parallel_decoding);
    # None: raster
    schedule: dict | None = None
    steps: torch.Tensor | None = None  # [N] long: decoding steps of each sample (parallel decoders), for rewards
    # learned-schedule rollouts (rlar.schedule): the per-step states and actions; the action of a sample is its
    # whole schedule, so logprobs and mask are [N, 1] (one log-prob per sample) and tokens are not actions
    trace: ScheduleTrace | None = None
    # [N, T] fp32: the critic's values at rollout time (PPO's value head; set by rlar.algorithm.update.value_advantages)
    values: torch.Tensor | None = None
    # [N, T] fp32: the actions' log-probs under the update's own pass on the rollout's weights, where computed before
    # the update (kl_penalty=reward under recomputed old log-probs); the update reuses them as the ratio's old ones,
    # once (it clears them)
    update_logprobs: torch.Tensor | None = None
    # [N] bool: the samples drawn from non-finite logits (set by the loop), left out of the update's passes
    nonfinite: torch.Tensor | None = None

    def __post_init__(self):
        self.condition = as_condition(self.condition)

    @property
    def labels(self) -> torch.Tensor | None:
        """The class ids ``[N]`` of the rows (negative: the null class), or None (a text condition may have none)."""
        return None if self.condition is None else self.condition.labels

    @property
    def sampled_tokens(self) -> int:
        """Image tokens the policy sampled (for throughput)."""
        return int(self.tokens.numel() if self.trace is not None else self.mask.sum())
