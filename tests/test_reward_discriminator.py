"""reward=discriminator: its logit against the log density ratio of two known Gaussians, its class term, the bound
on its logit, scoring without learning, and an exact resume from its state."""

import copy

import pytest
import torch
from torch import nn
from train_split import TrainSplit, stand_in_classifier

from rlar.reward.discriminator import DiscriminatorReward
from rlar.reward.scoring import scoring_only


class Flat(nn.Module):
    """A stand-in for the reward classifier: the features are the pixels."""

    def features(self, x: torch.Tensor) -> torch.Tensor:
        return x.flatten(1)


def discriminator(real: torch.Tensor, labels: torch.Tensor, **options) -> DiscriminatorReward:
    """A reward over train images ``real [M, 1, 1, 1]`` (1-d features) with the flat classifier."""
    data = TrainSplit(real, labels)
    reward = DiscriminatorReward(data, None, **{"hidden": 32, "lr": 3e-3, "batch_size": 256, **options})
    reward.classifier = stand_in_classifier(reward.data, Flat())
    return reward


def test_the_logit_estimates_the_log_density_ratio_of_two_gaussians():
    g = torch.Generator().manual_seed(0)
    real = (1 + torch.randn(4096, generator=g)).view(-1, 1, 1, 1)  # data ~ N(1, 1)
    fake = (-1 + torch.randn(4096, generator=g)).view(-1, 1, 1, 1)  # samples ~ N(-1, 1)
    reward = discriminator(real, torch.zeros(4096, dtype=torch.long), class_conditional=False, warmup_steps=1500,
                           buffer_size=4096)
    reward(fake, None, None)
    grid = torch.tensor([-1.0, 0.0, 1.0]).view(-1, 1, 1, 1)
    with scoring_only(reward):
        logit, parts = reward(grid, None, None)
    # log N(x; 1, 1) - log N(x; -1, 1) = 2x
    assert torch.allclose(logit, torch.tensor([-2.0, 0.0, 2.0]), atol=0.35), logit
    assert parts["disc_logit"] is logit


def test_the_class_term_scores_a_sample_against_its_own_class():
    g = torch.Generator().manual_seed(1)
    labels = torch.arange(2).repeat(1024)  # class 0 at +1, class 1 at -1
    real = (torch.where(labels == 0, 1.0, -1.0) + 0.3 * torch.randn(2048, generator=g)).view(-1, 1, 1, 1)
    fake = (0.3 * torch.randn(2048, generator=g)).view(-1, 1, 1, 1)  # samples of both classes at 0
    reward = discriminator(real, labels, warmup_steps=800, buffer_size=2048)
    reward(fake, None, {"labels": labels})
    with scoring_only(reward):
        logit, _ = reward(torch.ones(2, 1, 1, 1), None, {"labels": torch.tensor([0, 1])})
    assert logit[0] > logit[1] + 2  # +1 is class 0's data, far from class 1's


def test_a_sample_far_off_the_data_gets_the_bound_and_the_rest_their_logit():
    g = torch.Generator().manual_seed(3)
    real = (1 + torch.randn(1024, generator=g)).view(-1, 1, 1, 1)
    reward = discriminator(real, torch.zeros(1024, dtype=torch.long), class_conditional=False, warmup_steps=300,
                           logit_bound=10.0)
    reward((-1 + torch.randn(1024, generator=g)).view(-1, 1, 1, 1), None, None)
    grid = torch.tensor([-200.0, -1.0, 0.0, 1.0, 200.0]).view(-1, 1, 1, 1)
    with scoring_only(reward):
        bounded, parts = reward(grid, None, None)
    raw = reward.model(grid.flatten(1), torch.full((5,), -1))  # the MLP extrapolates far outside [-4, 4]
    assert raw[0] < -10 and raw[-1] > 10 and raw[1:-1].abs().max() < 10, raw
    assert torch.equal(bounded, torch.tensor([-10.0, *raw[1:-1].tolist(), 10.0]))
    assert parts["disc_logit"] is bounded
    reward.logit_bound = None  # the default: the logit as it is
    with scoring_only(reward):
        assert torch.equal(reward(grid, None, None)[0], raw)


@pytest.mark.parametrize("bound", [0.0, -1.0])
def test_a_bound_that_is_not_positive_is_refused(bound):
    with pytest.raises(ValueError, match=rf"reward.logit_bound must be > 0 .*got {bound}"):
        discriminator(torch.zeros(4, 1, 1, 1), torch.zeros(4, dtype=torch.long), logit_bound=bound)


def test_scoring_only_leaves_it_unchanged_and_its_state_resumes_exactly():
    g = torch.Generator().manual_seed(2)
    labels = torch.arange(2).repeat(64)
    real = torch.randn(128, 1, 1, 1, generator=g)
    batches = [torch.randn(16, 1, 1, 1, generator=g) for _ in range(4)]
    meta = {"labels": labels[:16]}
    reward = discriminator(real, labels, warmup_steps=5, steps=2)
    reward(batches[0], None, meta)
    state = copy.deepcopy(reward.state_dict())  # what a checkpoint holds: the values at the save
    before = [p.clone() for p in reward.model.parameters()]
    with scoring_only(reward):
        reward(batches[1], None, meta)
    assert all(torch.equal(a, b) for a, b in zip(before, reward.model.parameters(), strict=True))
    assert len(reward.fake[0]) == 16 and reward.learning
    resumed = discriminator(real, labels, warmup_steps=5, steps=2)
    resumed.load_state_dict(state)
    for x in batches[2:]:
        assert torch.equal(reward(x, None, meta)[0], resumed(x, None, meta)[0])


def test_a_non_finite_sample_is_left_unscored_and_out_of_the_buffer():
    g = torch.Generator().manual_seed(2)
    real = (1 + torch.randn(256, generator=g)).view(-1, 1, 1, 1)
    reward = discriminator(real, torch.zeros(256, dtype=torch.long), class_conditional=False, warmup_steps=20)
    fake = torch.randn(8, 1, 1, 1, generator=g)
    fake[3] = float("nan")  # one decoded image with a NaN pixel
    scores, _ = reward(fake, None, None)
    assert scores.isnan().tolist() == [i == 3 for i in range(8)]
    assert len(reward.fake[0]) == 7 and all(p.isfinite().all() for p in reward.model.parameters())
    assert reward(torch.randn(4, 1, 1, 1, generator=g), None, None)[0].isfinite().all()  # the next batch: scored


def test_the_first_batch_fills_the_buffer_with_its_newest_samples_only():
    g = torch.Generator().manual_seed(4)
    real = torch.randn(64, 1, 1, 1, generator=g)
    reward = discriminator(real, torch.zeros(64, dtype=torch.long), class_conditional=False, warmup_steps=1,
                           buffer_size=5)
    fake = torch.randn(12, 1, 1, 1, generator=g)
    reward(fake, None, None)
    assert torch.equal(reward.fake[0], fake.flatten(1)[-5:]) and torch.equal(reward.fake[1], torch.full((5,), -1))
    reward(fake[:2], None, None)  # the next batch joins it, the oldest leave
    assert torch.equal(reward.fake[0], torch.cat([fake[-3:], fake[:2]]).flatten(1))
