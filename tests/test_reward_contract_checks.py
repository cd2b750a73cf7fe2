"""A reward of the user's own that breaks the contract fails where it is built or first called, with an error
naming what it gave and what is expected, not deep in the update (``IndexError`` in the loss) or as an
``AttributeError`` on a method the loop reads."""

import pytest
import torch

from rlar.config.store import compose_config
from rlar.contracts import Reward
from rlar.reward.build import build_reward
from rlar.reward.mixture import WeightedReward
from rlar.reward.quality import SharpnessReward
from rlar.reward.scoring import checked_output, decode_and_score


class Plain:
    """A callable with the right output that does not subclass Reward (no learning, metrics, close, ...)."""

    def __call__(self, images, targets=None, meta=None):
        score = images.mean(dim=(1, 2, 3))
        return score, {"plain": score}


class Column(Reward):
    """Scores ``[N, 1]``: the prior's evaluation took them, and the first update failed with an IndexError."""

    def __call__(self, images, targets=None, meta=None):
        return images.mean(dim=(1, 2, 3))[:, None], {}


class Bare(Reward):
    def __call__(self, images, targets=None, meta=None):
        return images.mean(dim=(1, 2, 3))


class Identity:
    def decode_code(self, codes):  # [N, T] -> [N, 1, 2, 2]
        return codes.float().view(len(codes), 1, 2, 2)


def test_a_reward_that_is_not_a_reward_is_refused_where_it_is_built():
    with pytest.raises(TypeError, match=r"reward \(_target_: test_reward_contract_checks.Plain\) built Plain, which "
                                        r"is not an rlar.contracts.Reward: subclass it"):
        build_reward(compose_config(["reward=sharpness", "reward._target_=test_reward_contract_checks.Plain"]))
    with pytest.raises(TypeError, match=r"reward.components.mine built Plain, which is not an rlar.contracts.Reward"):
        WeightedReward({"sharp": SharpnessReward(), "mine": Plain()}, {"sharp": 1.0, "mine": 1.0})


@pytest.mark.parametrize("reward, error, message", [
    (Bare(), TypeError, r"reward Bare returned a Tensor, not the pair \(scores \[N\], \{component: \[N\]\}\)"),
    (Column(), ValueError, r"reward Column returned scores \(@, 1\) for @ images: one score per image"),
])
def test_a_reward_output_that_breaks_the_contract_names_what_it_returned(reward, error, message):
    tokens = torch.arange(16).view(4, 4)
    with pytest.raises(error, match=message.replace("@", "4")):
        decode_and_score(Identity(), reward, tokens, None, {})
    with pytest.raises(error, match=message.replace("@", "2")):  # scored a chunk at a time: each chunk checked
        decode_and_score(Identity(), reward, tokens, None, {}, chunk_size=2)


def test_components_must_hold_one_value_per_image():
    scores = torch.zeros(3)
    assert checked_output((scores, {"a": torch.ones(3)}), 3, Bare(), torch.device("cpu"))[1]["a"].tolist() == [1, 1, 1]
    with pytest.raises(ValueError, match=r"returned components \{'a': \(\)\} for 3 images: each one value per image"):
        checked_output((scores, {"a": torch.tensor(1.0)}), 3, Bare(), torch.device("cpu"))
    with pytest.raises(TypeError, match="returned components as a list, not a dict"):
        checked_output((scores, [scores]), 3, Bare(), torch.device("cpu"))


def test_scores_and_components_come_back_on_the_samples_device():
    """A reward of the user's own that scores on the CPU: its scores go where the samples are (NCCL gathers GPU
    tensors only); here the meta device stands in for a GPU."""
    scores, parts = checked_output((torch.zeros(3), {"a": torch.ones(3)}), 3, Bare(), torch.device("meta"))
    assert scores.device.type == parts["a"].device.type == "meta"
