"""Loop-level behaviour: NaN rewards, per-condition statistics in checkpoints, warm-up, PPO's critic."""

import math

import pytest
import torch
from omegaconf import OmegaConf

from rlar.config.schemas import compose_config
from rlar.loop import train_rl_loop
from rlar.reward.reconstruction import ReconstructionReward


class HalfNaNReward(ReconstructionReward):
    """-L2, but NaN for every other sample: a reward model that fails on some items."""

    def __call__(self, images, targets, meta=None):
        reward, parts = super().__call__(images, targets, meta)
        reward = reward.clone()
        reward[::2] = float("nan")
        return reward, parts


@pytest.mark.slow
def test_nan_rewards_are_excluded_and_counted(tiny, tmp_path, tb_scalars):
    cfg = compose_config([*tiny, "eval.max_items=4"])
    OmegaConf.set_struct(cfg, False)
    cfg.reward = {"_target_": f"{__name__}.HalfNaNReward", "kind": "l2"}
    summary = train_rl_loop(cfg, tmp_path)
    assert tb_scalars(tmp_path, "reward/nan_count") == [8.0, 8.0]  # half of 4 items x 4 generations
    assert all(math.isfinite(v) for v in tb_scalars(tmp_path, "reward/mean"))
    assert all(math.isfinite(v) for v in tb_scalars(tmp_path, "loss/policy"))
    assert summary["history"][-1]["eval/nan_count"] == 2.0  # 4 held-out items x 1 sample, half NaN
    assert math.isfinite(summary["eval_reward_after"])


@pytest.mark.slow
def test_condition_statistics_are_saved_in_checkpoints(tiny, tmp_path):
    cfg = compose_config([*tiny, "algorithm=reinforce", "algorithm.baseline=condition", "algorithm.num_generations=4",
                          "algorithm.minibatch_size=8"])
    train_rl_loop(cfg, tmp_path)
    state = torch.load(tmp_path / "checkpoints" / "last.pt", weights_only=True)["algorithm"]["tracker"]
    assert sum(state["count"].values()) == 2 * 16  # 2 iterations x 4 images x 4 generations
    assert set(state["count"]) <= set(range(10))  # keyed by class


@pytest.mark.slow
def test_warmup_then_ppo_with_value_head(tiny, tmp_path, tb_scalars):
    cfg = compose_config([*tiny, "algorithm=ppo", "algorithm.value_head=true", "algorithm.epochs=2",
                          "algorithm.minibatch_size=8", "train.warmup_steps=3", "algorithm.beta=0.05"])
    summary = train_rl_loop(cfg, tmp_path)
    assert math.isfinite(summary["warmup_ce"])
    assert len(tb_scalars(tmp_path, "warmup/ce")) == 3
    assert all(v > 0 for v in tb_scalars(tmp_path, "loss/value"))
    assert all(v >= 0 for v in tb_scalars(tmp_path, "loss/kl"))
    saved = torch.load(tmp_path / "checkpoints" / "last.pt", weights_only=True)
    assert saved["critic"]["weight"].shape == (1, 96)


@pytest.mark.slow
def test_rollout_modes_run_end_to_end_with_ratio_one(tiny, tmp_path, tb_scalars):
    for mode, extra in (("teacher_forced", []), ("prefix", ["rollout.prefix_len=16"])):
        cfg = compose_config([*tiny, f"rollout.mode={mode}", *extra, "rollout.cfg_scale=2.0",
                              "rollout.temperature=0.7", "eval.max_items=4"])
        train_rl_loop(cfg, tmp_path / mode)
        assert max(tb_scalars(tmp_path / mode, "policy/ratio_max_abs_dev")) <= 1e-5


class CountingReward(ReconstructionReward):
    """-L2 that records the size of each call and reports a metric, like the remote client."""

    def __init__(self):
        super().__init__("l2")
        self.calls = []

    def __call__(self, images, targets, meta=None):
        assert len(meta["labels"]) == len(images)  # per-item metadata is sliced with the chunk
        self.calls.append(len(images))
        return super().__call__(images, targets, meta)

    def metrics(self):
        return {"reward/calls": float(len(self.calls))}


def test_chunked_scoring_gives_the_same_rewards():
    from rlar.reward.scoring import decode_and_score
    from rlar.tokenizer.digits_vq import DigitsVQ
    from rlar.tokenizer.frozen import FrozenTokenizer

    tokenizer = FrozenTokenizer(DigitsVQ(codebook_size=16, hidden=16))
    tokens, targets = torch.randint(0, 16, (10, 64)), torch.rand(10, 1, 32, 32) * 2 - 1
    meta = {"labels": torch.arange(10)}
    whole = decode_and_score(tokenizer, CountingReward(), tokens, targets, meta)
    reward_fn = CountingReward()
    chunked = decode_and_score(tokenizer, reward_fn, tokens, targets, meta, chunk_size=4)
    assert reward_fn.calls == [4, 4, 2]
    assert torch.allclose(whole[0], chunked[0]) and torch.allclose(whole[1], chunked[1])
    assert chunked[3]["reward/calls"] == 3.0 and chunked[3]["time/reward"] >= 0
