"""CCA (algorithm=cca): its loss and gradients against hand-computed numbers, mismatched labels that are never the
image's own, an update on a tiny policy, and a tiny run that trains, evaluates and resumes exactly (under DDP:
tests/test_distributed.py)."""

import copy
import math

import pytest
import torch

from rlar.algorithm.cca import CCA, cca_loss, mismatched_labels
from rlar.algorithm.pair_update import pair_update, sequence_logprobs
from rlar.config.store import compose_config
from rlar.config.validate import ConfigError, check_config, check_data_pairs
from rlar.eval.model.independence import rewards_reading_the_judge
from rlar.loop import train_rl_loop


def test_cca_loss_and_gradients_by_hand():
    # two pairs, beta 0.5, lambda 2
    logp_pos = torch.tensor([-10.0, -12.0], requires_grad=True)
    logp_neg = torch.tensor([-20.0, -15.0], requires_grad=True)
    ref_pos, ref_neg = torch.tensor([-11.0, -12.0]), torch.tensor([-18.0, -15.0])
    loss, stats = cca_loss(logp_pos, ref_pos, logp_neg, ref_neg, beta=0.5, neg_weight=2.0)
    # implicit rewards: positive 0.5 * (1, 0) = (0.5, 0), negative 0.5 * (-2, 0) = (-1, 0)
    # -log sigmoid(x) = log(1 + e^-x):
    #   pair 1: log(1 + e^-0.5) + 2 log(1 + e^-1) = 0.474077 + 2 * 0.313262 = 1.100601
    #   pair 2: log 2 + 2 log 2 = 2.079442; mean 1.590021
    assert loss.item() == pytest.approx(1.590021, abs=1e-5)
    assert stats["cca/reward_pos"] == pytest.approx(0.25)
    assert stats["cca/reward_neg"] == pytest.approx(-0.5)
    assert stats["cca/accuracy"] == 0.5  # pair 1: 0.5 > -1; pair 2: 0 > 0 is not a win
    assert stats["loss/cca"] == pytest.approx(1.590021, abs=1e-5)
    loss.backward()
    # d/d logp_pos = -beta * sigmoid(-r_pos) / N: -0.25 * (0.377541, 0.5)
    # d/d logp_neg = lambda * beta * sigmoid(r_neg) / N: 0.5 * (0.268941, 0.5)
    assert logp_pos.grad.tolist() == pytest.approx([-0.094385, -0.125], abs=1e-5)
    assert logp_neg.grad.tolist() == pytest.approx([0.134471, 0.25], abs=1e-5)


def test_negative_weight_zero_leaves_the_positive_term_alone():
    loss, _ = cca_loss(torch.tensor([-1.0]), torch.tensor([-1.0]), torch.tensor([5.0]), torch.tensor([0.0]),
                       beta=1.0, neg_weight=0.0)
    assert loss.item() == pytest.approx(math.log(2))


def test_mismatched_labels_are_never_the_own_label_and_cover_the_others():
    labels = torch.arange(10).repeat(500)  # [5000]
    negatives = mismatched_labels(labels, 10, torch.Generator().manual_seed(0))
    assert negatives.shape == labels.shape and negatives.dtype == labels.dtype
    assert bool((negatives != labels).all())
    assert negatives.min() >= 0 and negatives.max() <= 9
    for c in range(10):  # each class's negatives: all 9 other classes, about 500 / 9 = 56 times each
        counts = torch.bincount(negatives[labels == c], minlength=10)
        assert counts[c] == 0 and bool((counts[torch.arange(10) != c] > 25).all())
    two = mismatched_labels(torch.tensor([0, 1, 1, 0]), 2, torch.Generator().manual_seed(1))
    assert two.tolist() == [1, 0, 0, 1]  # two classes: always the other one


def test_mismatched_labels_refuse_what_has_no_other_class():
    with pytest.raises(ValueError, match="num_classes=1"):
        mismatched_labels(torch.zeros(3, dtype=torch.long), 1, torch.Generator())
    with pytest.raises(ValueError, match=r"class ids in \[0, 10\)"):
        mismatched_labels(torch.tensor([0, -1]), 10, torch.Generator())


@pytest.mark.parametrize("bad,match", [({"beta": 0.0}, "algorithm.beta must be > 0"),
                                       ({"neg_weight": -1.0}, "algorithm.neg_weight must be >= 0"),
                                       ({"minibatch_size": 0}, "algorithm.minibatch_size must be >= 1")])
def test_bad_settings_are_refused(bad, match):
    with pytest.raises(ValueError, match=match):
        CCA(**bad)


def test_sequence_logprobs_sum_the_teacher_forced_token_logprobs(gpt):
    codes = torch.randint(32, (3, 12), generator=torch.Generator().manual_seed(0))
    labels = torch.tensor([0, 2, 4])
    expected = torch.log_softmax(gpt(codes, labels), -1).gather(-1, codes[..., None])[..., 0].sum(1)
    torch.testing.assert_close(sequence_logprobs(gpt, codes, labels), expected)


def test_pair_update_starts_at_the_prior_and_its_loss_falls(gpt):
    """Against a copy of itself, the first loss is (1 + lambda) log 2 with zero rewards; a few steps on the same
    pairs lower the loss and separate the implicit rewards."""
    ref = copy.deepcopy(gpt).requires_grad_(False)
    prior = {k: v.clone() for k, v in gpt.state_dict().items()}
    algorithm = CCA(beta=0.1, neg_weight=1.0, minibatch_size=3)  # 5 images: minibatches of 3 and 2
    optimizer = torch.optim.AdamW(gpt.parameters(), lr=1e-3)
    codes = torch.randint(32, (5, 12), generator=torch.Generator().manual_seed(0))
    labels = torch.tensor([0, 1, 2, 3, 4])
    negatives = algorithm.negatives(labels, 5, torch.Generator().manual_seed(0))
    first = pair_update(gpt, ref, optimizer, algorithm, codes, labels, negatives, max_grad_norm=1.0)
    assert first["loss/cca"] == pytest.approx(2 * math.log(2), abs=1e-5)
    assert first["cca/reward_pos"] == pytest.approx(0.0, abs=1e-5) and first["policy/grad_norm"] > 0
    for _ in range(10):
        last = pair_update(gpt, ref, optimizer, algorithm, codes, labels, negatives, max_grad_norm=1.0)
    assert last["loss/cca"] < first["loss/cca"] - 0.05
    assert last["cca/reward_pos"] > last["cca/reward_neg"] and last["cca/accuracy"] == 1.0
    assert all(torch.equal(ref.state_dict()[k], prior[k]) for k in prior)  # the reference stays the prior
    assert any(not torch.equal(gpt.state_dict()[k], prior[k]) for k in prior)


def test_experiment_guidance_free_is_the_grpo_recipe_and_guidance_free_cca_its_baseline():
    recipe = compose_config(["experiment=guidance_free"])
    assert recipe.algorithm._target_.endswith("GRPO") and recipe.algorithm.ntp_weight == 0.1
    assert list(recipe.reward.components) == ["disc", "fd", "cls", "cov"]
    assert dict(recipe.reward.weights) == {"disc": 1.0, "fd": 1.0, "cls": 3.0, "cov": 1.0}
    assert (recipe.optimizer.lr, recipe.train.batch_size, recipe.train.iterations) == (5e-5, 8, 600)
    assert recipe.eval.guided_cfg_scale == 2.0 and recipe.rollout.cfg_scale == 1.0  # evaluated unguided
    # the preset is the default reward with the coverage term added, as the studies wrote it on the command line
    by_hand = compose_config(["+reward@reward.components.cov=coverage", "+reward.weights.cov=1"])
    assert recipe.reward == by_hand.reward
    baseline = compose_config(["experiment=guidance_free_cca"])
    assert baseline.algorithm._target_ == "rlar.algorithm.cca.CCA"
    assert set(baseline.reward.components) == {"cls", "fd"} and baseline.reward.components.fd.class_conditional
    assert (baseline.optimizer.lr, baseline.train.batch_size, baseline.train.ema_decay) == (1e-5, 32, None)
    assert baseline.eval.guided_cfg_scale == 2.0 and baseline.eval.samples_per_item == 4
    for cfg in (recipe, baseline):
        assert rewards_reading_the_judge(cfg) == []
        check_config(cfg)
    assert compose_config(["experiment=guidance_free", "reward=l2"]).reward.kind == "l2"


@pytest.mark.slow
def test_a_tiny_cca_run_trains_evaluates_and_resumes_exactly(tiny_cca, tmp_path, monkeypatch, tb_scalars,
                                                             stop_after_two_updates):
    cfg = compose_config([*tiny_cca, "train.iterations=20", "train.batch_size=16", "algorithm.minibatch_size=8",
                          "eval.every=10", "optimizer.lr=3e-4"])
    straight = train_rl_loop(cfg, tmp_path / "straight")
    losses = tb_scalars(tmp_path / "straight", "loss/cca")
    assert len(losses) == 20
    assert losses[0] == pytest.approx(2 * math.log(2), abs=1e-4)  # the policy is the prior: rewards 0
    # each iteration scores fresh pairs: the loss falls, and the positive beats the negative more often than not
    assert sum(losses[10:]) / 10 < losses[0] - 0.02
    assert sum(tb_scalars(tmp_path / "straight", "cca/accuracy")[10:]) / 10 > 0.6
    assert [h["iteration"] for h in straight["history"]] == [0, 10, 20]
    assert {"eval_fd_after", "eval_class_acc_after", "eval_precision_after", "eval_recall_after"} <= set(straight)

    with monkeypatch.context() as patch:
        stop_after_two_updates(patch, "pair_update")
        with pytest.raises(KeyboardInterrupt):
            train_rl_loop(cfg, tmp_path / "resumed")
    assert torch.load(tmp_path / "resumed" / "checkpoints" / "last.pt", weights_only=True)["iteration"] == 2
    resumed = train_rl_loop(cfg, tmp_path / "resumed")
    assert tb_scalars(tmp_path / "resumed", "loss/cca") == losses  # same batches, negatives and steps
    weights = [torch.load(tmp_path / run / "checkpoints" / "last.pt", weights_only=True)["policy"]
               for run in ("straight", "resumed")]
    assert all(torch.equal(weights[0][k], weights[1][k]) for k in weights[0])
    assert resumed["eval_fd_after"] == straight["eval_fd_after"]



def test_cca_on_prompts_without_images_is_refused(tmp_path):
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("".join(f"a thick {d} leaning right\n" for d in ("one", "two", "three", "four")))
    cfg = compose_config(["algorithm=cca", "data=prompts", f"data.path={prompts}", "eval.classifier=false",
                          "tokenizer.checkpoint=/x", "policy.checkpoint=/x", "reward=compositional",
                          "reward.data={_target_:rlar.data.digits.DigitsData}"])
    with pytest.raises(ConfigError, match="algorithm=cca trains on the data's images .* data=prompts has none"):
        check_data_pairs(cfg)
