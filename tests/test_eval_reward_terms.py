"""Each term of a reward is averaged over the samples that reported it: a call that reports no terms (a remote
reward whose servers all failed on that batch) counts as NaN rows, on one process and across processes."""


import pytest
import torch
from omegaconf import OmegaConf
from reward_calls import CallsSeen
from torchrun import torchrun_source

from rlar.contracts import Reward
from rlar.data.digits import DigitsData
from rlar.eval.evaluate import evaluate, scored_prefix
from rlar.policy.gpt import GPT
from rlar.rollout.sampling import cfg_scales
from rlar.tokenizer.digits_vq import DigitsVQ
from rlar.tokenizer.frozen import FrozenTokenizer


class FailingEveryOtherCall(Reward):
    """The mean ink of each sample, reported as the term ``ink`` by every other call only."""

    def __init__(self):
        self.reported = []

    def __call__(self, images, targets=None, meta=None):
        score = images.float().flatten(1).mean(1)  # [n]
        if len(self.reported) % 2:
            self.reported.append(None)
            return score, {}
        self.reported.append(score)
        return score, {"ink": score}


def evaluated(reward: Reward, max_items: int = 10, guided: float | None = None) -> dict[str, float]:
    """An evaluation of a tiny untrained policy scored by ``reward``: ``max_items`` items, 2 samples each, 4 items per
    batch, and with ``guided``, again under that guidance."""
    torch.manual_seed(0)
    tokenizer = FrozenTokenizer(DigitsVQ(codebook_size=16, hidden=16))
    policy = GPT(vocab_size=16, block_size=64, num_classes=10, n_layer=1, n_head=2, n_embd=32).eval()
    eval_cfg = OmegaConf.create({"seed": 3, "max_items": max_items, "samples_per_item": 2, "batch_size": 4,
                                 "guided_cfg_scale": guided})
    return evaluate(policy, tokenizer, reward, DigitsData(), eval_cfg,
                    {"temperature": 1.0, "cfg_scale": cfg_scales(64, 1.0)}, "cpu")


def test_a_batch_without_a_term_counts_as_nan_rows_of_it():
    reward = FailingEveryOtherCall()
    result = evaluated(reward)
    assert [r is None for r in reward.reported] == [False, True, False]  # batches of 8, 8 and 4 samples
    reported = torch.cat([r for r in reward.reported if r is not None])  # [12]
    assert result["eval/reward/ink"] == pytest.approx(float(reported.mean()))


class CountingCalls(Reward):
    """Scores 0 and reports, as a remote reward does, how many calls it got since its metrics were last read."""

    def __init__(self):
        self.calls = 0

    def __call__(self, images, targets=None, meta=None):
        self.calls += 1
        return torch.zeros(len(images)), {}

    def metrics(self):
        calls, self.calls = self.calls, 0
        return {"reward/remote_calls": float(calls)}


def test_an_evaluation_reads_what_the_reward_reports_so_the_next_iteration_does_not():
    reward = CountingCalls()
    assert evaluated(reward, guided=2.0)["eval/remote_calls"] == 6.0  # 3 batches, unguided and guided
    assert reward.metrics() == {"reward/remote_calls": 0.0}


class ServersDown(CountingCalls):
    """No item scored (NaN), and reported as a remote reward reports it; ``scored``: the items it scores anyway."""

    def __init__(self, scored: int = 0):
        super().__init__()
        self.scored, self.failed = scored, 0

    def __call__(self, images, targets=None, meta=None):
        rewards = torch.full((len(images),), float("nan"))
        rewards[:self.scored] = 0.0
        self.failed += len(images) - min(self.scored, len(images))
        return rewards, {}

    def metrics(self):
        failed, self.failed = self.failed, 0
        return {"reward/remote_failed_items": float(failed)}


@pytest.mark.parametrize("scored", [0, 2])
def test_an_evaluation_its_reward_servers_scored_nothing_of_raises_instead_of_recording_nan(scored):
    if scored:  # a partial outage: the mean of what was scored, and the count of what was not
        result = evaluated(ServersDown(scored), max_items=4)
        assert result["eval/reward"] == 0.0 and result["eval/remote_failed_items"] == 6.0
    else:
        with pytest.raises(RuntimeError, match=r"scored none of its samples \(eval/reward NaN\).* 8 items"):
            evaluated(ServersDown(scored), max_items=4)


def test_an_evaluation_converts_only_each_batchs_held_out_images():
    class BatchesOnly(DigitsData):  # the whole split as floats is refused
        @property
        def eval_images(self):
            raise AssertionError("read eval_images whole")

        @eval_images.setter
        def eval_images(self, images):
            self.held_out = images

        def eval_images_of(self, items):
            asked.append(len(self.held_out[items]))
            return self.held_out[items]

    asked = []
    torch.manual_seed(0)
    tokenizer = FrozenTokenizer(DigitsVQ(codebook_size=16, hidden=16))
    policy = GPT(vocab_size=16, block_size=64, num_classes=10, n_layer=1, n_head=2, n_embd=32).eval()
    reward, data = CallsSeen(), BatchesOnly()
    eval_cfg = OmegaConf.create({"seed": 3, "max_items": 10, "samples_per_item": 2, "batch_size": 4,
                                 "guided_cfg_scale": None})
    evaluate(policy, tokenizer, reward, data, eval_cfg, {"temperature": 1.0, "cfg_scale": cfg_scales(64, 1.0)}, "cpu")
    assert asked == [4, 4, 2]
    assert torch.equal(torch.cat(reward.targets), data.held_out[:10].repeat_interleave(2, 0))  # each item k times


GATHER = """
import torch, torch.distributed as dist
from rlar.runtime import distributed
dist.init_process_group("gloo")
named = {"a": torch.tensor([1.0, 2.0])} if dist.get_rank() == 0 else {"b": torch.tensor([3.0, 4.0])}
out = distributed.gather_named_rows(named, 2, "cpu")
if dist.get_rank() == 1:
    print({k: v.tolist() for k, v in out.items()})
dist.destroy_process_group()
"""


@pytest.mark.slow
def test_ranks_with_different_terms_gather_the_same_names(tmp_path):
    proc = torchrun_source(GATHER, tmp_path)
    assert "{'a': [1.0, 2.0, nan, nan], 'b': [nan, nan, 3.0, 4.0]}" in proc.stdout


def test_a_rank_s_padding_rows_are_not_scored_with_its_real_ones():
    """Under torchrun a short rank pads its share of the held-out items with copies (rank_share): a reward that scores
    a call together (a z-scored mix) must read the real rows alone, which then score as they would by themselves."""
    seen = []  # each call's meta
    scores = torch.tensor([1.0, 2.0, 3.0, 4.0, 5.0, 6.0])

    def zscored(images, targets=None, meta=None):
        seen.append(meta)
        x = images.flatten(1)[:, 0]  # [n]
        return (x - x.mean()) / x.std(), {"raw": x}

    samples = scores[:, None, None, None].expand(6, 1, 2, 2)  # [6, 1, 2, 2]
    meta = {"labels": torch.arange(6), "prompts": list("abcdef")}
    reward, parts = scored_prefix(zscored, samples, None, meta, 4, "cpu")
    real = scores[:4]
    assert torch.allclose(reward[:4], (real - real.mean()) / real.std()) and reward[4:].isnan().all()
    assert torch.equal(parts["raw"][:4], real) and parts["raw"][4:].isnan().all()
    assert seen[-1]["labels"].tolist() == [0, 1, 2, 3] and seen[-1]["prompts"] == ["a", "b", "c", "d"]
    reward, parts = scored_prefix(zscored, samples, None, meta, 0, "cpu")  # a batch of padding alone
    assert reward.isnan().all() and parts == {} and len(seen) == 1
