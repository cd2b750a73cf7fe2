"""A weight soup: the average of policies fine-tuned from one prior, moved toward that prior or away from it.

``soup = prior + weight * (mean(policies) - prior)``: ``weight`` 1 is the plain average of the policies (a uniform
model soup), below 1 it interpolates toward the prior (as WiSE-FT and WARP do), above 1 it extrapolates. Averaging
runs of different seeds keeps what they share and cancels part of what each learned on its own.
"""

from __future__ import annotations

import math

import torch


def weight_soup(policies: list[dict[str, torch.Tensor]], names: list[str], weight: float = 1.0,
                prior: dict[str, torch.Tensor] | None = None) -> dict[str, torch.Tensor]:
    """The soup of the state dicts ``policies`` (named ``names`` in errors), key by key in float64 and cast back to
    each tensor's dtype. Tensors that are not floating point (counters, index buffers) must agree and are kept.
    ``prior`` (same keys) is needed unless ``weight`` is 1."""
    if not policies:
        raise ValueError("a soup needs at least one policy")
    if not math.isfinite(weight):
        raise ValueError(f"a soup weight must be a finite number, got {weight}; 1 is the runs' plain average")
    if weight != 1.0 and prior is None:
        raise ValueError(f"a soup weight of {weight} moves the average toward the prior: give the prior's weights")
    first = policies[0]
    reference, reference_name = (prior, "the prior") if prior is not None else (first, names[0])
    for name, state in zip(names, policies, strict=True):
        check_same_layout(state, reference, name, reference_name)
    soup = {}
    for key, value in first.items():
        if not value.is_floating_point():
            differing = [name for name, state in zip(names, policies, strict=True)
                         if not torch.equal(state[key], value)]
            if differing:
                raise ValueError(f"'{key}' is not a floating-point tensor and differs between {names[0]} and "
                                 f"{', '.join(differing)}: such tensors cannot be averaged")
            soup[key] = value.clone()
            continue
        mean = sum(state[key].double() for state in policies) / len(policies)  # one float64 copy at a time
        mixed = mean if weight == 1.0 else prior[key].double() + weight * (mean - prior[key].double())
        soup[key] = mixed.to(value.dtype)
    return soup


def check_same_layout(state: dict[str, torch.Tensor], reference: dict[str, torch.Tensor], name: str,
                      reference_name: str) -> None:
    """``state`` (the policy of ``name``) has the keys, shapes and dtypes of ``reference`` (``reference_name``), else
    an error naming both and the first mismatch."""
    if state.keys() != reference.keys():
        extra, missing = sorted(state.keys() - reference.keys()), sorted(reference.keys() - state.keys())
        raise ValueError(f"the policy of {name} has other weights than {reference_name}: extra {extra[:3]}, missing "
                         f"{missing[:3]}; a soup averages policies of one architecture")
    for key, value in reference.items():
        if state[key].shape != value.shape or state[key].dtype != value.dtype:
            raise ValueError(f"'{key}' of the policy of {name} is {tuple(state[key].shape)} {state[key].dtype}, "
                             f"{reference_name} has {tuple(value.shape)} {value.dtype}: a soup averages policies of "
                             "one architecture")
