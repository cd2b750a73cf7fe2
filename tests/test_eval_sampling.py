"""An evaluation samples as the rollouts do: the rollout's temperature, top-k, top-p and guidance over its interval,
in the training loop's evaluations and in rlar-eval alike (rlar/rollout/sampling.py: evaluation_sampling)."""

import pytest
import torch
from omegaconf import OmegaConf
from reward_calls import CallsSeen

from rlar import loop
from rlar.config.store import compose_config
from rlar.data.digits import DigitsData
from rlar.eval.evaluate import evaluate
from rlar.loop import train_rl_loop
from rlar.policy.gpt import GPT
from rlar.rollout.sampling import cfg_scales, evaluation_sampling
from rlar.tokenizer.digits_vq import DigitsVQ
from rlar.tokenizer.frozen import FrozenTokenizer


def test_the_evaluation_sampling_is_the_rollouts_with_the_given_scale_and_temperature():
    rollout = compose_config(["rollout.top_k=5", "rollout.top_p=0.9", "rollout.temperature=0.8",
                              "rollout.cfg_scale=2", "rollout.cfg_interval=[0.25,0.75]"]).rollout
    sampling = evaluation_sampling(rollout, 8)
    assert {k: v for k, v in sampling.items() if k != "cfg_scale"} == {"temperature": 0.8, "top_k": 5, "top_p": 0.9}
    assert sampling["cfg_scale"].tolist() == [1, 1, 2, 2, 2, 2, 1, 1]
    given = evaluation_sampling(rollout, 8, cfg_scale=3.0, temperature=1.0)
    assert given["temperature"] == 1.0 and torch.equal(given["cfg_scale"], cfg_scales(8, 3.0, [0.25, 0.75]))
    assert (given["top_k"], given["top_p"]) == (5, 0.9)


@pytest.mark.parametrize(("top_k", "same"), [(1, True), (None, False)])
def test_an_evaluation_under_top_k_1_draws_each_item_s_most_likely_codes(top_k, same):
    torch.manual_seed(0)
    tokenizer = FrozenTokenizer(DigitsVQ(codebook_size=16, hidden=16))
    policy = GPT(vocab_size=16, block_size=64, num_classes=10, n_layer=1, n_head=2, n_embd=32).eval()
    rollout = compose_config([] if top_k is None else [f"rollout.top_k={top_k}"]).rollout
    eval_cfg = OmegaConf.create({"seed": 3, "max_items": 4, "samples_per_item": 2, "batch_size": 4,
                                 "guided_cfg_scale": None})
    reward = CallsSeen()
    evaluate(policy, tokenizer, reward, DigitsData(), eval_cfg, evaluation_sampling(rollout, 64), "cpu")
    draws = torch.cat(reward.images).view(4, 2, -1)  # [items, draws, pixels]
    assert torch.equal(draws[:, 0], draws[:, 1]) == same


def test_the_loop_trains_under_top_k_and_evaluates_under_it_too(tiny, tmp_path, monkeypatch):
    seen = []
    evaluate_as_is = loop.evaluate
    monkeypatch.setattr(loop, "evaluate", lambda *args: seen.append(args[5]) or evaluate_as_is(*args))
    summary = train_rl_loop(compose_config([*tiny, "rollout.top_k=3", "rollout.top_p=0.9", "train.iterations=1",
                                            "eval.every=1"]), tmp_path)
    assert summary["iterations"] == 1
    assert [(s["top_k"], s["top_p"]) for s in seen] == [(3, 0.9), (3, 0.9)]  # the prior's evaluation, then the final


def test_an_evaluation_encodes_its_conditions_outside_the_policy_s_autocast(monkeypatch):
    """As the rollouts do (rlar.loop.batch_conditions): under a bf16 autocast a text encoder would give other features
    than the ones the policy trained on, and cache them as fp32 ones."""
    from rlar.eval import evaluate as evaluate_module

    encode, under_autocast = evaluate_module.item_conditions, []

    def recording(*args):
        under_autocast.append(torch.is_autocast_enabled("cpu"))
        return encode(*args)

    monkeypatch.setattr(evaluate_module, "item_conditions", recording)
    torch.manual_seed(0)
    tokenizer = FrozenTokenizer(DigitsVQ(codebook_size=16, hidden=16))
    policy = GPT(vocab_size=16, block_size=64, num_classes=10, n_layer=1, n_head=2, n_embd=32).eval()
    eval_cfg = OmegaConf.create({"seed": 3, "max_items": 4, "samples_per_item": 2, "batch_size": 2,
                                 "guided_cfg_scale": None})
    sampling = evaluation_sampling(compose_config([]).rollout, 64)
    evaluate(policy, tokenizer, CallsSeen(), DigitsData(), eval_cfg, sampling, "cpu",
             autocast=lambda: torch.autocast("cpu", dtype=torch.bfloat16))
    assert under_autocast == [False, False]  # two batches
