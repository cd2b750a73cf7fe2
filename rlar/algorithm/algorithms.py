"""REINFORCE, GRPO and PPO: one update skeleton (rlar.algorithm.update), different advantages and losses.

Every algorithm also carries the regularizers the skeleton applies: KL to the frozen prior (``beta``,
``kl_estimator``; in the loss, or with ``kl_penalty=reward`` taken from the rewards), an entropy bonus, and gradient
accumulation.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, fields

import torch

from rlar.algorithm.advantages import SCALES, group_advantages, grouped, leave_one_out_advantages
from rlar.algorithm.kl import ESTIMATORS
from rlar.algorithm.losses import AGGREGATIONS, RATIO_LEVELS, clipped_surrogate, reinforce_loss
from rlar.algorithm.stats import ConditionStats

BASELINES = ("batch", "condition", "leave_one_out")
OLD_LOGPROBS = ("auto", "sampler", "recompute")
KL_PENALTIES = ("loss", "reward")
GROUP_BY = ("item", "condition")


def check_minibatch(minibatch_size: int, num_generations: int) -> None:
    if minibatch_size < 1:
        raise ValueError(f"algorithm.minibatch_size must be >= 1 (sequences per minibatch), got {minibatch_size}")
    if minibatch_size % num_generations:
        raise ValueError(
            f"algorithm.minibatch_size={minibatch_size} must be a multiple of algorithm.num_generations="
            f"{num_generations} so that a group stays in one minibatch"
        )


def check_ratio_options(target_kl: float | None, delta: float | None, high: float) -> None:
    """The options of a ratio-clipped loss: ``target_kl`` > 0, and ``delta`` above the clip range ``1 + high``."""
    if target_kl is not None and not target_kl > 0:  # NaN too
        raise ValueError(f"algorithm.target_kl must be > 0 (null: off), got {target_kl}")
    if delta is not None and not delta > 1 + high:
        raise ValueError(f"algorithm.delta={delta} caps the ratio above the clip range: it must be > 1 + "
                         f"clip_eps_high = {1 + high} (e.g. algorithm.delta=4), or null (off)")


@dataclass
class Common:
    beta: float = 0.0  # KL coefficient to the frozen prior; the reference model is built only when > 0
    kl_estimator: str = "k3"  # k3 | exact (full codebook)
    # loss: beta x the KL estimate added to the loss | reward: beta x the sample's summed log-ratio to the prior over
    # its actions subtracted from its reward before the advantages (TRL's RLOO and PPO)
    kl_penalty: str = "loss"
    entropy_coef: float = 0.0
    grad_accum: int = 1  # minibatches per optimizer step
    stats_key: str = "class"  # what "a condition" is for per-condition statistics: class | image
    # next-token cross-entropy on the ground-truth codes (VA-pi's regulariser; rollout.mode=teacher_forced: the
    # same forward pass)
    ntp_weight: float = 0.0
    # the old log-probs of the ratio: the sampler's (KV-cached), or recomputed by the update's own forward pass
    # before it (under bf16 the two differ by ~1e-2); auto: recompute under bf16 autocast only
    old_logprobs: str = "auto"  # auto | sampler | recompute
    # with recomputed old log-probs: each action token's loss weighted by min(pi_update / pi_sampler, cap), the
    # truncated importance correction of the sampler's numerics (TRL's vllm_importance_sampling_cap, 2); null: off
    sampler_correction_cap: float | None = None
    # the policy loss reads only this top share of each minibatch's action tokens by entropy (TRL's
    # top_entropy_quantile; 0.2 in "Beyond the 80/20 rule"); 1: every token
    top_entropy_quantile: float = 1.0
    value_head = False  # only PPO may learn a critic
    steps_once = False  # True: one optimizer step per rollout whatever grad_accum (on-policy REINFORCE)
    trains_on_data = False  # learns from sampled rollouts (rlar.algorithm.cca trains on data pairs)

    def check_common(self) -> None:
        if self.kl_estimator not in ESTIMATORS:
            raise ValueError(f"algorithm.kl_estimator must be one of {ESTIMATORS}, got {self.kl_estimator!r}")
        if self.beta < 0:
            raise ValueError(f"algorithm.beta must be >= 0, got {self.beta}")
        if self.kl_penalty not in KL_PENALTIES:
            raise ValueError(f"algorithm.kl_penalty must be one of {KL_PENALTIES}, got {self.kl_penalty!r}")
        if self.kl_penalty == "reward" and not self.beta > 0:
            raise ValueError("algorithm.kl_penalty=reward subtracts beta x the KL to the prior from each reward: set "
                             "algorithm.beta > 0 (e.g. 0.05), or kl_penalty=loss")
        if self.kl_penalty == "reward" and self.kl_estimator != "k3":
            raise ValueError(f"algorithm.kl_estimator={self.kl_estimator} is the KL term of the loss; "
                             "kl_penalty=reward takes each sample's summed log-ratio: leave kl_estimator=k3")
        if self.stats_key not in ("class", "image"):
            raise ValueError(f"algorithm.stats_key must be 'class' or 'image', got {self.stats_key!r}")
        if self.old_logprobs not in OLD_LOGPROBS:
            raise ValueError(f"algorithm.old_logprobs must be one of {OLD_LOGPROBS}, got {self.old_logprobs!r}")
        cap = self.sampler_correction_cap
        if cap is not None and not cap >= 1:  # NaN too
            raise ValueError(f"algorithm.sampler_correction_cap must be >= 1 (the largest weight a token's loss may "
                             f"take), got {cap}; e.g. algorithm.sampler_correction_cap=2, or null (off)")
        if not 0 < self.top_entropy_quantile <= 1:
            raise ValueError(f"algorithm.top_entropy_quantile must be in (0, 1] (the share of tokens the policy loss "
                             f"reads; 1: all), got {self.top_entropy_quantile}; e.g. 0.2")
        if self.grad_accum < 1:
            raise ValueError(f"algorithm.grad_accum must be >= 1, got {self.grad_accum}")
        if self.ntp_weight < 0:
            raise ValueError(f"algorithm.ntp_weight must be >= 0, got {self.ntp_weight}")
        if self.epochs < 1:
            raise ValueError(f"algorithm.epochs must be >= 1 (passes over each rollout), got {self.epochs}")
        for key in ("clip_eps", "clip_eps_high"):
            value = getattr(self, key, None)
            if value is not None and value < 0:
                raise ValueError(f"algorithm.{key} must be >= 0 (the ratio's range is [1 - clip_eps, "
                                 f"1 + clip_eps_high]), got {value}; e.g. algorithm.{key}=0.2")

    def state_dict(self) -> dict:
        return {}

    def load_state_dict(self, state: dict) -> None:
        pass


@dataclass
class GRPO(Common):
    """Group-relative advantages and a PPO-clip loss (a ratio per token, or per sample: GSPO)."""

    num_generations: int = 8  # G samples per image (>= 2)
    clip_eps: float = 0.2
    clip_eps_high: float | None = None  # asymmetric range [1 - clip_eps, 1 + clip_eps_high] (DAPO's clip-higher)
    scale: str = "group"  # std over the group | batch | none (Dr. GRPO)
    adv_clip: float | None = 5.0  # clamp |advantage|; null = off
    std_eps: float = 1e-8  # added to the std that scales the advantages (TRL and flow_grpo: 1e-4)
    aggregation: str = "token"  # token | sequence | constant (sum / (N * loss_constant), Dr. GRPO)
    loss_constant: float | None = None  # divisor per sequence for aggregation=constant; null = T tokens
    drop_zero_std_groups: bool = False  # leave groups with equal rewards out of the update
    # item: a group is the G samples of an item | condition: every sample of the batch with the item's condition
    # (stats_key: its class or its image; flow_grpo's per-prompt groups)
    group_by: str = "item"
    # token: a ratio per token | sequence: one per sample, the geometric mean of its tokens' (GSPO; it stays much
    # nearer 1, so GSPO clips at ~3e-4 / 4e-4)
    importance_sampling_level: str = "token"
    delta: float | None = None  # two-sided clip: the unclipped ratio capped at delta (> 1 + clip_eps_high); null: off
    # skip the optimizer step whose minibatches measured a mean approx_kl above it, and end the update there (SB3's
    # early stop; cleanrl checks after each epoch); null: off
    target_kl: float | None = None
    epochs: int = 1
    minibatch_size: int = 64  # sequences per minibatch (a multiple of num_generations)

    def __post_init__(self):
        self.check_common()
        if self.num_generations < 2:
            raise ValueError(
                f"GRPO needs at least 2 generations per item to form a group, got algorithm.num_generations="
                f"{self.num_generations}; set algorithm.num_generations>=2 or use algorithm=reinforce"
            )
        if self.scale not in SCALES:
            raise ValueError(f"algorithm.scale must be one of {SCALES}, got {self.scale!r}")
        if self.group_by not in GROUP_BY:
            raise ValueError(f"algorithm.group_by must be one of {GROUP_BY}, got {self.group_by!r}")
        if self.kl_penalty == "reward" and (self.scale == "group" or self.drop_zero_std_groups):
            raise ValueError("algorithm.kl_penalty=reward with GRPO's scale=group or drop_zero_std_groups: a group "
                             "whose rewards tie would be standardized on its KL alone (beta cancels), never dropped; "
                             "set algorithm.scale=batch or none (without drop_zero_std_groups), use "
                             "algorithm=reinforce algorithm.baseline=leave_one_out (RLOO), or kl_penalty=loss")
        if not self.std_eps > 0:  # NaN too
            raise ValueError(f"algorithm.std_eps must be > 0 (it keeps a tied group's advantages finite), got "
                             f"{self.std_eps}; e.g. 1e-4")
        for key, off in (("adv_clip", "no clamp"), ("loss_constant", "T")):
            value = getattr(self, key)
            if value is not None and value <= 0:
                raise ValueError(f"algorithm.{key} must be > 0 (null: {off}), got {value}")
        if self.aggregation not in AGGREGATIONS:
            raise ValueError(f"algorithm.aggregation must be one of {AGGREGATIONS}, got {self.aggregation!r}")
        if self.loss_constant is not None and self.aggregation != "constant":
            raise ValueError(f"algorithm.loss_constant={self.loss_constant:g} divides the loss of "
                             f"aggregation=constant only, and algorithm.aggregation={self.aggregation}; set "
                             "algorithm.aggregation=constant, or loss_constant=null")
        if self.importance_sampling_level not in RATIO_LEVELS:
            raise ValueError(f"algorithm.importance_sampling_level must be one of {RATIO_LEVELS}, got "
                             f"{self.importance_sampling_level!r}")
        check_ratio_options(self.target_kl, self.delta,
                            self.clip_eps if self.clip_eps_high is None else self.clip_eps_high)
        check_minibatch(self.minibatch_size, self.num_generations)

    def advantages(self, rewards: torch.Tensor, keys: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, dict]:
        """``(advantages [N], keep [N] bool, stats)``; ``keep`` is False for dropped zero-variance groups."""
        groups = keys if self.group_by == "condition" else None
        adv, stats = group_advantages(rewards, self.num_generations, self.std_eps, self.scale, self.adv_clip, groups)
        keep = torch.ones_like(rewards, dtype=torch.bool)
        if self.drop_zero_std_groups:
            r, back = grouped(rewards, self.num_generations, groups)  # [K, M]; a non-finite reward (NaN) is no sample
            finite = r.isfinite()
            spread = r.masked_fill(~finite, -math.inf).amax(1) - r.masked_fill(~finite, math.inf).amin(1)  # [K]
            keep = back((spread > 0)[:, None].expand_as(r))  # all non-finite: -inf
        return adv, keep, stats

    def loss(self, logp, old_logp, adv, mask):
        high = self.clip_eps if self.clip_eps_high is None else self.clip_eps_high
        return clipped_surrogate(logp, old_logp, adv, mask, self.clip_eps, self.aggregation, high,
                                 self.loss_constant, self.importance_sampling_level, self.delta)


@dataclass
class Reinforce(Common):
    """REINFORCE with a baseline (the batch mean, a per-condition running mean, or the mean of the item's other
    generations: RLOO) and standardized advantages. On-policy:
    one optimizer step per rollout, on the mean gradient of all its minibatches (``steps_once``), since its loss has no
    ratio to correct a second step's samples of an older policy."""

    steps_once = True
    reads_old_logprobs = False  # its loss has no ratio: recomputing them would be a forward pass for nothing
    num_generations: int = 8
    # batch mean | condition (running mean/std per stats_key, batch until min_count) | leave_one_out (the mean of the
    # item's other num_generations - 1 rewards, RLOO; standardized by the batch's std)
    baseline: str = "batch"
    standardize: bool = True
    min_count: int = 16  # rewards a condition needs before its own statistics replace the batch's
    buffer_size: int | None = None  # condition baseline: each condition's last buffer_size rewards (DDPO 16); null: all
    minibatch_size: int = 64
    epochs: int = 1
    tracker: ConditionStats = field(init=False, repr=False)

    def __post_init__(self):
        self.check_common()
        if self.num_generations < 1:
            raise ValueError(f"algorithm.num_generations must be >= 1, got {self.num_generations}")
        if self.epochs != 1:
            raise ValueError(f"REINFORCE is on-policy: algorithm.epochs must be 1, got {self.epochs}")
        if self.baseline not in BASELINES:
            raise ValueError(f"algorithm.baseline must be one of {BASELINES}, got {self.baseline!r}")
        if self.baseline == "leave_one_out" and self.num_generations < 2:
            raise ValueError("algorithm.baseline=leave_one_out takes each sample's baseline from the other samples of "
                             f"its item: set algorithm.num_generations>=2, got {self.num_generations}")
        if self.buffer_size is not None and self.baseline != "condition":
            raise ValueError(f"algorithm.buffer_size={self.buffer_size} is the window of the per-condition baseline: "
                             "set algorithm.baseline=condition, or buffer_size=null")
        if self.baseline == "condition" and self.min_count < 1:
            raise ValueError(f"algorithm.min_count is the rewards a condition needs before its own statistics are "
                             f"used: at least 1, got {self.min_count}")
        if self.buffer_size is not None and self.buffer_size < self.min_count:
            raise ValueError(f"algorithm.buffer_size={self.buffer_size} keeps fewer rewards per condition than "
                             f"algorithm.min_count={self.min_count} asks for: set buffer_size >= min_count, or null")
        if self.kl_penalty == "reward" and self.baseline == "condition" and self.standardize:
            raise ValueError("algorithm.kl_penalty=reward with baseline=condition and standardize: a condition whose "
                             "rewards tie would be standardized on its KL alone (beta cancels); set "
                             "algorithm.standardize=false, baseline=leave_one_out or batch, or kl_penalty=loss")
        check_minibatch(self.minibatch_size, self.num_generations)
        self.tracker = ConditionStats(self.min_count, self.buffer_size)

    def advantages(self, rewards: torch.Tensor, keys: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, dict]:
        keep = torch.ones_like(rewards, dtype=torch.bool)
        if self.baseline == "batch":  # the whole batch as one group
            adv, stats = group_advantages(rewards, rewards.numel(), scale="group" if self.standardize else "none")
            return adv, keep, stats
        if self.baseline == "leave_one_out":
            scale = "batch" if self.standardize else "none"
            adv, stats = leave_one_out_advantages(rewards, self.num_generations, scale)
            return adv, keep, stats
        self.tracker.update(keys, rewards)
        mean, std = self.tracker.mean_std(keys, rewards)
        adv = rewards - mean
        if self.standardize:
            adv = adv / (std + 1e-8)
        finite = rewards.isfinite()
        return torch.where(finite, adv, 0.0), keep, {"reward/nonfinite_count": float((~finite).sum())}

    def loss(self, logp, old_logp, adv, mask):
        return reinforce_loss(logp, adv, mask)

    def state_dict(self) -> dict:
        return {"tracker": self.tracker.state_dict()}

    def load_state_dict(self, state: dict) -> None:
        self.tracker.load_state_dict(state["tracker"])


@dataclass
class PPO(Common):
    """PPO-clip over several inner epochs; advantages normalized over the batch, or GAE from a value head.

    ``baseline=group`` subtracts the mean reward of the item's own G samples before the batch normalization:
    with a per-image target, the spread between images is noise the policy cannot act on.
    """

    num_generations: int = 4
    # group: r - mean of the item's G samples | batch: r - batch mean; then / batch std
    baseline: str = "group"
    clip_eps: float = 0.2
    epochs: int = 4
    minibatch_size: int = 32
    aggregation: str = "token"
    value_head: bool = False  # a linear critic on the policy's hidden states, GAE over token positions
    vf_coef: float = 0.5
    # clip each value's change from its rollout-time value to +-value_clip in the value loss (the larger of the
    # clipped and unclipped squared errors, as in PPO2); null: off
    value_clip: float | None = None
    # true: the critic reads detached hidden states, so the value loss trains the critic alone, not the policy's trunk
    value_detach: bool = False
    target_kl: float | None = None  # as GRPO's: a step whose mean approx_kl exceeds it is not taken, the update ends
    gamma: float = 1.0
    gae_lambda: float = 0.95

    def __post_init__(self):
        self.check_common()
        if self.aggregation not in AGGREGATIONS:
            raise ValueError(f"algorithm.aggregation must be one of {AGGREGATIONS}, got {self.aggregation!r}")
        if self.baseline not in ("group", "batch"):
            raise ValueError(f"algorithm.baseline must be 'group' or 'batch' for PPO, got {self.baseline!r}")
        for key in ("gamma", "gae_lambda"):
            if not 0 <= getattr(self, key) <= 1:
                raise ValueError(f"algorithm.{key} must be in [0, 1] (a discount), got {getattr(self, key)}")
        if self.vf_coef < 0:
            raise ValueError(f"algorithm.vf_coef must be >= 0 (the value loss's weight), got {self.vf_coef}")
        check_ratio_options(self.target_kl, None, self.clip_eps)
        if self.num_generations < 1:
            raise ValueError(f"algorithm.num_generations must be >= 1, got {self.num_generations}")
        if self.value_clip is not None and (not self.value_clip > 0 or not self.value_head):  # NaN too
            raise ValueError(f"algorithm.value_clip={self.value_clip} clips the value head's loss: it must be > 0 "
                             "with algorithm.value_head=true (e.g. algorithm.value_clip=0.2), or null (off)")
        if self.value_detach and not self.value_head:
            raise ValueError("algorithm.value_detach=true detaches the value head's input: set "
                             "algorithm.value_head=true, or value_detach=false")
        unread = [f"algorithm.{f.name}={getattr(self, f.name):g}" for f in fields(self)
                  if f.name in ("vf_coef", "gamma", "gae_lambda") and getattr(self, f.name) != f.default]
        if unread and not self.value_head:
            raise ValueError(f"{', '.join(unread)}: read by the value head alone (its loss's weight, GAE's "
                             "discounts); set algorithm.value_head=true, or leave them at their defaults")
        if self.baseline == "group" and self.num_generations < 2 and not self.value_head:
            raise ValueError("PPO with algorithm.baseline=group and algorithm.num_generations=1 subtracts each reward "
                             "from itself: every advantage would be 0; set algorithm.num_generations>=2, "
                             "algorithm.baseline=batch or algorithm.value_head=true")
        check_minibatch(self.minibatch_size, self.num_generations)

    def advantages(self, rewards: torch.Tensor, keys: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, dict]:
        """``(r - baseline) / batch std`` (the value-head path replaces them with GAE in the update)."""
        if self.baseline == "group":
            adv, stats = group_advantages(rewards, self.num_generations, scale="batch")
        else:
            adv, stats = group_advantages(rewards, rewards.numel(), scale="group")
        return adv, torch.ones_like(rewards, dtype=torch.bool), stats

    def loss(self, logp, old_logp, adv, mask):
        return clipped_surrogate(logp, old_logp, adv, mask, self.clip_eps, self.aggregation)
