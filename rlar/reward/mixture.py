"""A weighted sum of rewards, each reported under its own name."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
from hydra.utils import get_object, instantiate
from omegaconf import DictConfig

from rlar.contracts import Reward
from rlar.reward.scoring import checked_output, require_reward
from rlar.runtime import distributed


def zscore(x: torch.Tensor, pooled: bool = False, eps: float = 0.0) -> torch.Tensor:
    """``(x - mean) / (std + eps)`` over the finite items of ``[N]`` (unbiased std); 0 where std is 0 (or fewer than
    two items are finite); NaN stays NaN. ``pooled``: the mean and std of every process's finite items (a training
    batch split over processes; every process must call it)."""
    finite = x[x.isfinite()]  # [M]
    if pooled and distributed.is_distributed():
        mean, std = distributed.mean_std_over_ranks(finite)  # NaN std with fewer than 2 items in all
    else:
        mean, std = (finite.mean(), finite.std()) if finite.numel() > 1 else (None, x.new_zeros(()))
    if std > 0:
        return (x - mean) / (std + eps)
    return torch.where(x.isfinite(), torch.zeros_like(x), x)


def weighted_sum(scores: Mapping[str, torch.Tensor], weights: Mapping[str, float], normalize: bool, pooled: bool,
                 absent: Mapping[str, torch.Tensor], n: int, device) -> torch.Tensor:
    """``sum_k weights[k] * scores[k]`` ``[n]`` on ``device``, each z-scored first if ``normalize`` (over every
    process's items if ``pooled``: a training batch). Where ``absent[k] [n]`` is True the component does not apply to
    the item (a prompt reward without a prompt): it adds nothing there, and the item's total is the weighted sum of
    its other components. NaN where a weighted component that applies is NaN, or where no weighted component scored
    the item; all 0 when none is weighted (or there is none)."""
    total = torch.zeros(n, device=device)
    scored = torch.full((n,), not any(weights.values()), device=device)
    for name, weight in weights.items():
        if not weight:
            continue
        score, skip = scores[name], absent.get(name)
        term = weight * (zscore(score, pooled) if normalize else score).float()  # [N]
        if skip is not None:
            term = torch.where(skip, 0.0, term)
        total = total + term
        scored = scored | ~score.isnan()
    return torch.where(scored, total, float("nan"))


def zscored(reward: Mapping | None) -> bool:
    """Whether the reward config ``reward`` z-scores its terms over each call: a ``normalize`` given to a class that
    sets ``zscores_terms`` (a mix, a remote client, or a subclass of one). Its mean is then 0 by construction, whatever
    the samples, and only its terms (``reward.weights``) say what moved. A reward whose ``normalize`` means something
    else is not one."""
    return (isinstance(reward, Mapping) and bool(reward.get("normalize")) and "_target_" in reward
            and getattr(get_object(reward["_target_"]), "zscores_terms", False))


class WeightedReward(Reward):
    """``reward = sum_k weights[k] * components[k]`` (each z-scored over the batch first if ``normalize``).

    Reports every component's raw score under its name, and each sub-component it reports as ``name/sub``
    (unless that is the component's score itself). An item that is NaN in a component with nonzero weight is
    NaN in the total, except in a component that sets ``may_be_absent = True`` (CLIP or compositional without a
    prompt): there NaN means "does not apply", and the item's total is the weighted sum of its other components (NaN
    only if no weighted component scored it; :func:`weighted_sum`). A non-finite image (a failed decode) is never
    absent: its NaN there makes its total NaN, whatever the other components gave it. A zero-weight component is only
    reported.
    """

    zscores_terms = True  # with normalize: each weighted term standardized over the call (:func:`zscored`)

    def __init__(self, components: Mapping[str, Any], weights: Mapping[str, float], normalize: bool = False):
        if set(components) != set(weights):
            raise ValueError(f"reward.weights {sorted(weights)} must name exactly reward.components "
                             f"{sorted(components)}")
        self.components = {name: require_reward(instantiate(c) if isinstance(c, (dict, DictConfig)) else c,
                                                f"reward.components.{name}") for name, c in components.items()}
        self.weights = {name: float(w) for name, w in weights.items()}
        self.normalize = normalize

    @property
    def learning(self) -> bool:
        return any(c.learning for c in self.components.values())

    @learning.setter
    def learning(self, value: bool) -> None:
        for component in self.components.values():
            component.learning = value

    def metrics(self) -> dict[str, float]:
        """What each component reports of itself since the last read, ``reward/<name>/<key>`` for its
        ``reward/<key>`` (a remote component's latency, retries, ...)."""
        return {f"reward/{name}/{key.removeprefix('reward/')}": value
                for name, component in self.components.items() for key, value in component.metrics().items()}

    def state_dict(self) -> dict:
        """The components that keep state across calls (a mix of stateless rewards has none)."""
        return {name: state for name, c in self.components.items() if (state := c.state_dict())}

    def load_state_dict(self, state: dict) -> None:
        for name, component in self.components.items():
            component.load_state_dict(state.get(name, {}))

    def close(self) -> None:
        for component in self.components.values():
            component.close()

    def __call__(self, images: torch.Tensor, targets: torch.Tensor | None, meta: dict | None = None):
        scores, absent, reported = {}, {}, {}
        failed = ~images.flatten(1).isfinite().all(1)  # [N]: a failed decode, which no term may call absent
        for name, component in self.components.items():
            score, subs = checked_output(component(images, targets, meta), len(images), component,
                                         images.device)  # [N], {sub: [N]}: the contract of a reward used alone
            scores[name] = reported[name] = score
            reported.update({f"{name}/{sub}": v for sub, v in subs.items() if sub != name and v is not score})
            if component.may_be_absent:
                absent[name] = score.isnan() & ~failed  # [N], both on the images' device
        # in training over the global batch (every process scores its rows), in evaluation over this call's
        total = weighted_sum(scores, self.weights, self.normalize, self.learning, absent, len(images), images.device)
        return total, reported
