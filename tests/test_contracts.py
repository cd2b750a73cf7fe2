"""The real classes satisfy the typed contracts of rlar.contracts (small instances, no training)."""

import pytest
import torch

from rlar.algorithm.algorithms import GRPO, PPO, Reinforce
from rlar.algorithm.cca import CCA
from rlar.contracts import (
    Algorithm,
    DataPairAlgorithm,
    DecodedSample,
    ParallelDecoder,
    ParallelPolicy,
    Policy,
    RasterPolicy,
    Reward,
    Tokenizer,
    TokenPolicy,
)
from rlar.policy.arpg import ARPG
from rlar.policy.llamagen import LlamaGen
from rlar.reward.efficiency import EfficiencyReward
from rlar.reward.metrics import PSNRReward, SSIMReward
from rlar.reward.mixture import WeightedReward
from rlar.reward.quality import SharpnessReward
from rlar.reward.reconstruction import ReconstructionReward
from rlar.rollout.parallel_decoding import sample_parallel
from rlar.schedule.decoder import ScheduleDecoder
from rlar.tokenizer.digits_vq import DigitsVQ
from rlar.tokenizer.frozen import FrozenTokenizer


def tiny_arpg() -> ARPG:
    torch.manual_seed(0)
    return ARPG(32, 16, 5, n_layer=4, n_head=2, dim=32, multiple_of=32, decoding={"num_iter": 4})


def test_raster_policies(gpt):
    llamagen = LlamaGen(32, 16, 5, n_layer=2, n_head=2, dim=32, multiple_of=32)
    for policy in (gpt, llamagen):
        assert isinstance(policy, RasterPolicy) and isinstance(policy, TokenPolicy) and isinstance(policy, Policy)
        assert not policy.decodes_in_parallel and not isinstance(policy, ParallelDecoder)


def test_parallel_decoders_decode_themselves():
    arpg = tiny_arpg()
    schedule = ScheduleDecoder(tiny_arpg(), max_steps=4, max_degree=4, hidden=16)
    assert isinstance(arpg, ParallelPolicy) and isinstance(arpg, ParallelDecoder) and arpg.decodes_in_parallel
    assert isinstance(schedule, ParallelDecoder) and schedule.decodes_in_parallel
    assert isinstance(schedule.arpg, ParallelPolicy) and not isinstance(arpg, RasterPolicy)
    labels = torch.tensor([0, 1, -1])
    for policy in (arpg, schedule):
        assert isinstance(policy.decode(labels, 3, generator=torch.Generator().manual_seed(0)), DecodedSample)
    # an ARPG decodes with its own settings: the sampler under them, draw for draw
    own = arpg.decode(labels, 3, temperature=0.9, generator=torch.Generator().manual_seed(1))
    sampler = sample_parallel(arpg, labels, 3, num_iter=4, temperature=0.9, generator=torch.Generator().manual_seed(1))
    assert torch.equal(own.tokens, sampler.tokens) and torch.equal(own.logprobs, sampler.logprobs)
    assert own.steps.tolist() == [4, 4, 4]


@pytest.mark.parametrize("labels, message", [
    ([0, 5], "class label 5 is out of range: the policy has num_classes=5"),  # was read as the null class
    ([0, 6], "class label 6 is out of range"),  # was an unused embedding row
    ([0, 1, 2], "3 conditions for 2 sequences"),
])
def test_parallel_decoders_refuse_labels_as_the_raster_sampler_does(labels, message):
    arpg = tiny_arpg()
    for policy in (arpg, ScheduleDecoder(arpg, max_steps=4, max_degree=4, hidden=16)):
        with pytest.raises(ValueError, match=message):
            policy.decode(torch.tensor(labels), 2, generator=torch.Generator().manual_seed(0))


def test_tokenizer():
    tokenizer = FrozenTokenizer(DigitsVQ(codebook_size=16, hidden=16))
    assert isinstance(tokenizer, Tokenizer)
    assert tokenizer.source is None and tokenizer.metrics == {}  # an untrained tokenizer: nothing known
    codes = tokenizer.encode_indices(torch.zeros(2, 1, 32, 32))
    assert codes.shape == (2, 64) and tokenizer.decode_code(codes).shape == (2, 1, 32, 32)
    with pytest.raises(ValueError, match=r"images of \(48, 48\) px give 144 codes.*read 64.*data\.image_size"):
        tokenizer.encode_indices(torch.zeros(2, 1, 48, 48))  # another resolution: another grid than the policy's


def test_rewards_report_no_metrics_by_default():
    rewards = [PSNRReward(), SSIMReward(), ReconstructionReward(), EfficiencyReward(), SharpnessReward(),
               WeightedReward({"l2": ReconstructionReward(), "sharp": SharpnessReward()}, {"l2": 1.0, "sharp": 0.5})]
    for reward in rewards:
        assert isinstance(reward, Reward)
        assert reward.metrics() == {} and not reward.may_be_absent


@pytest.mark.parametrize("algorithm", [GRPO(), Reinforce(), PPO(), PPO(value_head=True)])
def test_algorithms(algorithm):
    assert isinstance(algorithm, Algorithm) and not algorithm.trains_on_data
    rewards = torch.arange(8, dtype=torch.float32)
    adv, keep, stats = algorithm.advantages(rewards, torch.zeros(8, dtype=torch.long))
    assert adv.shape == keep.shape == (8,) and isinstance(stats, dict)
    algorithm.load_state_dict(algorithm.state_dict())


def test_cca_trains_on_data_pairs():
    cca = CCA()
    assert isinstance(cca, DataPairAlgorithm) and not isinstance(cca, Algorithm) and cca.trains_on_data
    labels = torch.tensor([0, 3, 9])
    negatives = cca.negatives(labels, 10, torch.Generator().manual_seed(0))
    assert negatives.shape == labels.shape and bool((negatives != labels).all())
    logp = torch.zeros(3, requires_grad=True)
    loss, stats = cca.loss(logp, torch.zeros(3), logp, torch.zeros(3))
    assert loss.requires_grad and "loss/cca" in stats
    cca.load_state_dict(cca.state_dict())


def test_a_module_missing_a_member_is_not_a_policy():
    assert not isinstance(torch.nn.Linear(2, 2), Policy)
    assert not isinstance(object(), Reward) and not isinstance(object(), Tokenizer)
