"""A reward term that does not apply to an item (a prompt reward without a prompt) adds nothing to its total, in a
local mix and in a remote client's combination (where the servers' own total tells an absent term from a failure),
and in training the z-score pools every process's items. A failed (non-finite) image is never absent."""

import math

import pytest
import torch

from rlar.contracts import Reward
from rlar.reward.mixture import WeightedReward, weighted_sum
from rlar.reward.remote.client import RemoteReward
from rlar.reward.scoring import checked_output
from rlar.runtime import distributed

NAN = float("nan")


def test_an_absent_term_adds_nothing_and_an_item_nothing_scored_stays_nan():
    clip, sharp = torch.tensor([1.0, NAN, 3.0, NAN]), torch.tensor([0.5, 1.0, 2.0, NAN])
    absent = {"clip": clip.isnan()}
    total = weighted_sum({"clip": clip, "sharp": sharp}, {"clip": 2.0, "sharp": 1.0}, False, False, absent, 4, "cpu")
    assert total[:3].tolist() == [2.5, 1.0, 8.0] and math.isnan(total[3])  # item 1: its sharpness; item 3: nothing
    zscored = weighted_sum({"clip": clip, "sharp": sharp}, {"clip": 2.0, "sharp": 1.0}, True, False, absent, 4, "cpu")
    sharp_z = (sharp[:3] - sharp[:3].mean()) / sharp[:3].std()
    assert zscored[1].item() == pytest.approx(sharp_z[1].item())  # a z-scored term's mean is 0
    alone = weighted_sum({"clip": clip, "sharp": sharp}, {"clip": 1.0, "sharp": 0.0}, False, False, absent, 4, "cpu")
    assert [math.isnan(x) for x in alone.tolist()] == [False, True, False, True]  # no weighted term scored it


class PromptTerm(Reward):
    """A prompt reward: NaN for item 1 (no prompt) and for a non-finite image (unscored), else 1."""

    may_be_absent = True

    def __call__(self, images, targets=None, meta=None):
        score = torch.ones(len(images))
        score[1] = NAN
        return score.masked_fill(~images.flatten(1).isfinite().all(1), NAN), {}


class Brightness(Reward):
    """A pixel reward that scores every image, a failed one too (its NaN pixels averaged past)."""

    def __call__(self, images, targets=None, meta=None):
        return images.flatten(1).nan_to_num(0.0).mean(1), {}


def test_a_failed_image_is_not_absent_from_a_prompt_term():
    images = torch.full((3, 1, 2, 2), 0.5)
    images[2, 0, 0, 0] = NAN  # item 2: a failed decode, with a prompt; item 1: a good image without one
    mix = WeightedReward({"prompt": PromptTerm(), "light": Brightness()}, {"prompt": 1.0, "light": 1.0})
    total, _ = mix(images, None)
    assert total[:2].tolist() == [1.5, 0.5] and math.isnan(total[2])


class Column(Reward):
    """A user's reward that breaks the contract: scores [N, 1]."""

    def __call__(self, images, targets=None, meta=None):
        return images.flatten(1).mean(1, keepdim=True), {}


def test_a_component_that_breaks_the_contract_is_named_as_when_it_is_used_alone():
    mix = WeightedReward({"light": Brightness(), "mine": Column()}, {"light": 1.0, "mine": 1.0})
    with pytest.raises(ValueError, match=r"reward Column returned scores \(3, 1\) for 3 images"):
        mix(torch.zeros(3, 1, 2, 2), None)  # before, broadcast into a [3, 3] total blamed on WeightedReward


def test_a_component_that_is_the_score_stays_one_object_on_the_samples_device():
    """A mix leaves out a component that is its score (``v is score``): moved to another device apart, it was logged
    twice."""
    score = torch.ones(2)
    moved, parts = checked_output((score, {"a": score, "b": score * 2}), 2, Brightness(), "meta")
    assert moved.device.type == "meta" and parts["a"] is moved and parts["b"] is not moved


def test_a_mix_of_no_component_scores_every_item_0():
    total, reported = WeightedReward({}, {})(torch.zeros(3, 1, 4, 4), None)
    assert total.tolist() == [0.0, 0.0, 0.0] and reported == {}


def test_in_training_the_z_score_is_every_process_s(monkeypatch):
    """Under torchrun the z-score pools every process's items (here: the other process holds clip scores 5 and 7)."""
    other = torch.tensor([5.0, 7.0], dtype=torch.float64)
    monkeypatch.setattr(distributed, "is_distributed", lambda: True)

    def pooled(values):  # this process's values and the other's
        every = torch.cat([values.double(), other])
        return every.mean().to(values.dtype), every.std().to(values.dtype)

    monkeypatch.setattr(distributed, "mean_std_over_ranks", pooled)
    present = torch.tensor([1.0, 3.0])
    z = weighted_sum({"clip": present}, {"clip": 1.0}, True, True, {}, 2, "cpu")
    assert z.tolist() == pytest.approx(((present - 4.0) / torch.tensor([1.0, 3.0, 5.0, 7.0]).std()).tolist())


@pytest.fixture
def client():
    reward = RemoteReward(["http://127.0.0.1:9"], weights={"clip": 2.0, "sharp": 1.0}, health_timeout_s=0.2)
    yield reward
    reward.close()


def test_a_remote_component_the_servers_scored_without_is_absent(client):
    """The servers' own total is finite where their reward scored an item without a component (CLIP without a
    prompt): that component does not apply there; where no server scored the item it stays NaN."""
    components = {"clip": torch.tensor([NAN, 1.0, 3.0, NAN]), "sharp": torch.tensor([0.5, 1.0, 2.0, NAN])}
    servers = torch.tensor([0.5, 3.0, 8.0, NAN])  # item 0: scored without clip; item 3: no server scored it
    total = client.combine(components, servers)
    assert total[:3].tolist() == [0.5, 3.0, 8.0] and math.isnan(total[3])  # item 0: its sharpness alone
    nothing = client.combine({}, torch.full((4,), NAN))  # every chunk failed: all NaN, the same statistics taken
    assert nothing.isnan().all()


def test_a_remote_client_z_scores_over_every_process_in_training(client, monkeypatch):
    calls = []
    monkeypatch.setattr(distributed, "is_distributed", lambda: True)
    monkeypatch.setattr(distributed, "mean_std_over_ranks", lambda v: calls.append(len(v)) or (v.sum(), v.new_ones(())))
    client.normalize = True
    components = {"clip": torch.tensor([1.0, 2.0, 4.0]), "sharp": torch.tensor([0.5, 1.0, 2.0])}
    client.learning = False  # an evaluation: this call's items
    client.combine(components, torch.zeros(3))
    assert calls == []
    client.learning = True  # training: one collective per weighted component's z-score, on every rank
    client.combine(components, torch.zeros(3))
    assert calls == [3, 3]
    calls.clear()
    client.combine({}, torch.full((3,), NAN))  # a process no server answered takes part all the same
    assert calls == [0, 0]
