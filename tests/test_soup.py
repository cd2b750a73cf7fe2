"""rlar.policy.soup: the average of several policies' weights, moved toward their prior by a weight."""

import pytest
import torch

from rlar.policy.soup import weight_soup

NAMES = ["run_a", "run_b"]


def state(value: float, steps: int = 7) -> dict[str, torch.Tensor]:
    return {"w": torch.full((2, 3), value), "b": torch.tensor([value, -value]), "steps": torch.tensor(steps)}


def test_the_soup_of_two_policies_by_hand():
    a, b, prior = state(2.0), state(4.0), state(1.0)
    plain = weight_soup([a, b], NAMES)
    assert torch.equal(plain["w"], torch.full((2, 3), 3.0)) and plain["b"].tolist() == [3.0, -3.0]
    toward = weight_soup([a, b], NAMES, weight=0.5, prior=prior)  # 1 + 0.5 * (3 - 1)
    assert torch.equal(toward["w"], torch.full((2, 3), 2.0)) and toward["b"].tolist() == [2.0, -2.0]
    beyond = weight_soup([a, b], NAMES, weight=1.5, prior=prior)  # 1 + 1.5 * (3 - 1)
    assert beyond["b"].tolist() == [4.0, -4.0]
    assert weight_soup([a, b], NAMES, weight=0.0, prior=prior)["w"].equal(prior["w"])
    assert plain["steps"].item() == 7 and plain["w"].dtype == torch.float32


def test_half_precision_weights_are_averaged_in_float64_and_kept_in_their_dtype():
    a = {"w": torch.tensor([1.0, 60000.0], dtype=torch.float16)}
    b = {"w": torch.tensor([2.0, 61024.0], dtype=torch.float16)}
    assert torch.isinf(a["w"] + b["w"]).any()  # summed in float16, the large pair overflows
    soup = weight_soup([a, b], NAMES)["w"]
    assert soup.dtype == torch.float16 and soup.tolist() == [1.5, 60512.0]


def test_policies_that_cannot_be_averaged_are_refused_by_name():
    with pytest.raises(ValueError, match="moves the average toward the prior: give the prior's weights"):
        weight_soup([state(1.0), state(2.0)], NAMES, weight=0.8)
    for weight in (float("nan"), float("inf")):  # else every weight NaN or infinite, and written without a word
        with pytest.raises(ValueError, match=f"a soup weight must be a finite number, got {weight}"):
            weight_soup([state(1.0), state(2.0)], NAMES, weight=weight, prior=state(0.0))
    with pytest.raises(ValueError, match="'steps' is not a floating-point tensor and differs between run_a and run_b"):
        weight_soup([state(1.0), state(2.0, steps=8)], NAMES)
    wider = {**state(2.0), "w": torch.zeros(2, 4)}
    with pytest.raises(ValueError, match=r"'w' of the policy of run_b is \(2, 4\) torch.float32, run_a has \(2, 3\)"):
        weight_soup([state(1.0), wider], NAMES)
    extra = {**state(2.0), "gate": torch.zeros(1)}
    with pytest.raises(ValueError, match=r"the policy of run_b has other weights than run_a: extra \['gate'\]"):
        weight_soup([state(1.0), extra], NAMES)
    with pytest.raises(ValueError, match=r"the policy of run_a has other weights than the prior: extra \['gate'\]"):
        weight_soup([extra, extra], NAMES, weight=0.5, prior=state(0.0))
