"""Automatic rewards (issue #9): contrast that does not saturate, quality of gray and colour images, efficiency."""

import pytest
import torch
from hydra.utils import instantiate

from rlar.config.store import compose_config
from rlar.reward.efficiency import EfficiencyReward
from rlar.reward.quality import ContrastReward, SaturationReward, SharpnessReward, to_unit


def random_images(*shape, seed=0):
    return torch.rand(*shape, generator=torch.Generator().manual_seed(seed)) * 2 - 1


# --- quality -------------------------------------------------------------------------------------------------

def test_contrast_ranks_images_that_max_minus_min_cannot():
    low = torch.zeros(1, 1, 8, 8)  # mid-gray, with one black and one white pixel
    low[0, 0, 0, 0], low[0, 0, 7, 7] = -1.0, 1.0
    high = torch.ones(1, 1, 8, 8)  # half black, half white
    high[..., :4] = -1.0
    both = torch.cat([low, high])
    span = to_unit(both).flatten(1)
    assert (span.amax(1) - span.amin(1)).tolist() == [1.0, 1.0]  # the public draft's max - min: a tie at 1
    score = ContrastReward()(both, None)[0]
    assert score[0] < 0.2 < score[1] == pytest.approx(0.5)


def test_quality_of_gray_rgb_equals_grayscale_and_colour_is_saturated():
    gray = random_images(3, 1, 12, 12)
    rgb = gray.repeat(1, 3, 1, 1)
    for reward in (SharpnessReward(), ContrastReward()):
        assert torch.allclose(reward(rgb, None)[0], reward(gray, None)[0], atol=1e-6)
    assert SaturationReward()(gray, None)[0].tolist() == [0.0] * 3
    assert SaturationReward()(rgb, None)[0].abs().max() < 1e-6
    assert (SaturationReward()(random_images(3, 3, 12, 12), None)[0] > 0.3).all()


# --- efficiency ----------------------------------------------------------------------------------------------

def test_efficiency_by_hand():
    reward = EfficiencyReward(target=4, max_steps=12)
    images = torch.zeros(6, 1, 4, 4)
    score, components = reward(images, None, {"steps": torch.tensor([1, 4, 6, 8, 12, 20])})
    assert score.tolist() == pytest.approx([1.0, 1.0, 0.75, 0.5, 0.0, 0.0])  # (12 - s) / 8, clamped to [0, 1]
    assert score.dtype == torch.float32 and components["efficiency"] is score
    assert reward(images, None, {"steps": 10})[0].tolist() == pytest.approx([0.25] * 6)  # one count for all


def test_efficiency_without_steps_names_the_fix():
    reward = EfficiencyReward()
    for meta in (None, {}, {"labels": torch.zeros(2)}):
        with pytest.raises(ValueError, match=r"meta\['steps'\].*rollout that reports steps.*ARPG schedule"):
            reward(torch.zeros(2, 1, 4, 4), None, meta)
    with pytest.raises(ValueError, match="one per sample"):
        reward(torch.zeros(2, 1, 4, 4), None, {"steps": [1, 2, 3]})
    with pytest.raises(ValueError, match="reward.max_steps"):
        EfficiencyReward(target=8, max_steps=8)


def test_efficiency_config_composes():
    reward = instantiate(compose_config(["reward=efficiency", "reward.target=2", "reward.max_steps=6"]).reward)
    assert reward(torch.zeros(1, 1, 4, 4), None, {"steps": torch.tensor([4])})[0].item() == pytest.approx(0.5)
