"""reward=compositional: each check of a prompt on its own, on hand-built strokes and on real digits."""

import math

import pytest
import torch
from hydra.utils import instantiate

from rlar.config.store import compose_config
from rlar.config.validate import ConfigError, check_config
from rlar.data.captions import parse_caption
from rlar.data.digits import DigitsData
from rlar.reward.compositional import CompositionalReward


def drawn(rows: range, width: int, left_of_row) -> torch.Tensor:
    """``[1, 1, 32, 32]`` in [-1, 1]: full ink in ``width`` columns from ``left_of_row(row)`` of each row."""
    image = -torch.ones(1, 1, 32, 32)
    for r in rows:
        image[0, 0, r, left_of_row(r):left_of_row(r) + width] = 1
    return image


THICK_VERTICAL = drawn(range(2, 30), 12, lambda r: 10)  # ink mass 0.328, skew 0
THIN_SLANTED = drawn(range(0, 32), 2, lambda r: 24 - r // 2)  # ink mass 0.0625, skew +0.5: top to the right


@pytest.fixture(scope="module")
def reward(tmp_path_factory):
    """The reward with its own classifier, briefly trained (in a cache of its own)."""
    cfg = compose_config(["reward=compositional", f"cache_dir={tmp_path_factory.mktemp('cache')}",
                          "reward.classifier.train.steps=30"])
    return instantiate(cfg.reward)


def test_each_check_on_hand_built_strokes(reward):
    images = torch.cat([THICK_VERTICAL, THIN_SLANTED, THICK_VERTICAL, THIN_SLANTED])
    prompts = ["a thick one standing upright", "a thick one standing upright", "a thin one leaning right",
               "a thin one leaning right"]
    value, checks = reward(images, None, {"prompts": prompts})
    assert checks["thickness_ok"].tolist() == [1, 0, 0, 1] and checks["slant_ok"].tolist() == [1, 0, 0, 1]
    seen = reward.classifier.get(images.device)(images).argmax(1)  # the reward's own classifier's reading
    assert torch.equal(checks["class_ok"], (seen == 1).float())
    assert torch.allclose(value, (checks["class_ok"] + checks["thickness_ok"] + checks["slant_ok"]) / 3)
    both = torch.tensor([1.0, 0, 0, 1])
    assert torch.equal(checks["all_ok"], both * (seen == 1).float())


def test_a_prompt_is_scored_on_what_it_asks(reward):
    images = torch.cat([THICK_VERTICAL, THIN_SLANTED])
    value, checks = reward(images, None, {"prompts": ["a one", "a thin seven"]})
    seen = reward.classifier.get(images.device)(images).argmax(1)
    assert math.isnan(checks["thickness_ok"][0]) and math.isnan(checks["slant_ok"][0])
    assert value[0].item() == float(seen[0] == 1)  # the class alone
    assert checks["thickness_ok"][1].item() == 1 and math.isnan(checks["slant_ok"][1])
    assert value[1].item() == pytest.approx((float(seen[1] == 7) + 1) / 2)


def test_real_digits_pass_their_own_captions_and_fail_others(reward):
    data = DigitsData(captions="attributes")
    images, captions = data.eval_images[:40], data.eval_captions[:40]
    value, checks = reward(images, images, {"prompts": captions})
    assert checks["thickness_ok"].eq(1).all() and checks["slant_ok"].eq(1).all()
    seen = reward.classifier.get(images.device)(images).argmax(1)
    assert torch.equal(checks["class_ok"], (seen == data.eval_labels[:40]).float())
    assert checks["class_ok"].mean() > 0.5  # a briefly trained classifier reads most real digits right
    # the same digits asked for another thickness (thin -> medium, medium -> thick, thick -> thin)
    other = []
    for c in captions:
        ask = parse_caption(c)
        other.append(c.replace(("thin", "medium", "thick")[ask.thickness], ("medium", "thick", "thin")[ask.thickness]))
    _, checks = reward(images, None, {"prompts": other})
    assert checks["thickness_ok"].eq(0).all() and checks["slant_ok"].eq(1).all()


def test_a_sample_without_a_prompt_is_absent_and_the_others_are_scored_as_alone(reward):
    images = torch.cat([THICK_VERTICAL, THIN_SLANTED, THIN_SLANTED])
    value, checks = reward(images, None, {"prompts": ["a thick one", None, "a thin seven leaning right"]})
    alone, alone_checks = reward(images[[0, 2]], None, {"prompts": ["a thick one", "a thin seven leaning right"]})
    assert math.isnan(value[1]) and all(math.isnan(v[1]) for v in checks.values())
    assert torch.equal(value[[0, 2]], alone)
    for name, v in alone_checks.items():
        assert torch.allclose(checks[name][[0, 2]], v, equal_nan=True), name
    assert reward.may_be_absent  # a mixture scores that sample by its other components


def test_a_non_finite_image_is_unscored_and_the_others_are_scored_as_alone(reward):
    failed = torch.full_like(THIN_SLANTED, float("nan"))  # a failed decode
    images = torch.cat([THICK_VERTICAL, failed, THIN_SLANTED])
    prompts = ["a thick one", "a thin seven leaning right", "a thin seven leaning right"]
    value, checks = reward(images, None, {"prompts": prompts})
    alone, alone_checks = reward(images[[0, 2]], None, {"prompts": [prompts[0], prompts[2]]})
    assert math.isnan(value[1]) and all(math.isnan(v[1]) for v in checks.values())
    assert torch.equal(value[[0, 2]], alone)
    for name, v in alone_checks.items():
        assert torch.allclose(checks[name][[0, 2]], v, equal_nan=True), name


def test_bad_prompts_name_the_problem(reward):
    images = torch.cat([THICK_VERTICAL, THIN_SLANTED])
    with pytest.raises(ValueError, match=r"needs each sample's prompt as meta\['prompts'\] \(2 strings\), got None"):
        reward(images, None, {"labels": torch.tensor([1, 7])})
    with pytest.raises(ValueError, match="cannot read the prompt 'a photo of a cat': it checks digit captions"):
        reward(images, None, {"prompts": ["a one", "a photo of a cat"]})


def test_the_reward_never_reads_the_judge():
    assert isinstance(instantiate(compose_config(["reward=compositional"]).reward), CompositionalReward)
    with pytest.raises(ConfigError, match="reward.classifier is the judge's classifier"):
        check_config(compose_config(["reward=compositional", "reward.classifier.train.seed=0"]))
