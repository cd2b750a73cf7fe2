"""The embedded evaluation model: the cached digits classifier, the Fréchet distance, eval/class_acc and eval/fd,
and the class_consistency and perceptual_digits rewards."""

import json
import math
from pathlib import Path

import numpy as np
import pytest
import scipy.linalg
import torch
from hydra.utils import instantiate

import rlar.eval.model.build
from rlar.config.store import compose_config
from rlar.data.digits import DigitsData
from rlar.eval.model import EvalModel, build_eval_classifier, frechet_distance, gaussian_fit
from rlar.eval.model.scorer import train_features
from rlar.eval.model.train import draw_step, random_pixels, shift
from rlar.loop import train_rl_loop
from rlar.reward.classifier import ClassConsistencyReward, PerceptualDigitsReward, perceptual_distance

TINY_TRAIN = {"train": {"steps": 3, "batch_size": 8}}  # for cache and determinism checks: learns nothing


@pytest.fixture(scope="module")
def data():
    return DigitsData()


@pytest.fixture(scope="module")
def classifier(data, cache_dir):
    """The default classifier, trained once per session in the shared cache (the tiny run below reads it; `tiny`
    itself asks for a briefly trained one)."""
    return build_eval_classifier(data, cache_dir)


def noise_images(n, seed=0):
    return torch.rand(n, 1, 32, 32, generator=torch.Generator().manual_seed(seed)) * 2 - 1


@pytest.mark.slow  # the classifier fixture trains the default classifier (300 steps)
def test_default_classifier_is_accurate_on_held_out_digits(classifier, data):
    assert classifier.metrics["eval_accuracy"] > 0.95
    record = json.loads(Path(classifier.source).with_suffix(".json").read_text())  # other tests cache others
    assert record["metrics"]["eval_accuracy"] == pytest.approx(classifier.metrics["eval_accuracy"])
    assert record["spec"]["data"] == data.fingerprint()
    assert not any(p.requires_grad for p in classifier.parameters()) and not classifier.training


@pytest.mark.slow  # the classifier fixture trains the default classifier (300 steps)
def test_second_build_reads_the_cache(classifier, data, cache_dir, monkeypatch):
    def no_training(*args, **kwargs):
        raise AssertionError("the cached classifier was trained again")

    monkeypatch.setattr(rlar.eval.model.build, "train_classifier", no_training)
    again = build_eval_classifier(data, cache_dir)
    assert again.source == classifier.source
    for key, value in classifier.state_dict().items():
        assert torch.equal(again.state_dict()[key], value)


def test_training_is_seeded_and_leaves_the_global_rng_alone(data, tmp_path):
    torch.manual_seed(7)
    state = torch.get_rng_state()
    first = build_eval_classifier(data, tmp_path / "a", TINY_TRAIN)  # trains (a cache miss)
    assert torch.equal(torch.get_rng_state(), state)
    second = build_eval_classifier(data, tmp_path / "b", TINY_TRAIN)
    for key, value in first.state_dict().items():
        assert torch.equal(second.state_dict()[key], value)
    other_seed = build_eval_classifier(data, tmp_path / "c", {"train": {**TINY_TRAIN["train"], "seed": 1}})
    assert not torch.equal(other_seed.head.weight, first.head.weight)


def test_random_shift_moves_whole_pixels_and_repeats_the_border():
    image = torch.arange(16.0).view(1, 1, 4, 4)
    shifted = shift(image.repeat(32, 1, 1, 1), random_pixels(32, 1, torch.Generator().manual_seed(0)))  # [32, 1, 4, 4]
    for out in shifted:
        matches = [(dy, dx) for dy in (-1, 0, 1) for dx in (-1, 0, 1)
                   if torch.equal(out[0, 1:3, 1:3], image[0, 0, 1 + dy:3 + dy, 1 + dx:3 + dx])]
        assert matches  # the interior is the image moved by at most one pixel
    assert len({tuple(out.flatten().tolist()) for out in shifted}) > 3
    generator, alone = torch.Generator().manual_seed(0), torch.Generator().manual_seed(0)
    idx, pixels = draw_step(10, 4, 0, generator)
    assert pixels is None and torch.equal(idx, torch.randint(10, (4,), generator=alone))
    assert torch.equal(generator.get_state(), alone.get_state())  # max_shift 0: nothing drawn for a shift


def test_frechet_distance_of_1d_gaussians_is_mean_and_std_gaps():
    m1, s1, m2, s2 = 0.5, 2.0, -1.0, 0.5
    fd = frechet_distance(torch.tensor([m1]), torch.tensor([[s1**2]]), torch.tensor([m2]), torch.tensor([[s2**2]]))
    assert fd == pytest.approx((m1 - m2) ** 2 + (s1 - s2) ** 2)


def test_frechet_distance_of_diagonal_gaussians_by_hand():
    # per axis (m1 - m2)^2 + (s1 - s2)^2: (1 + 1) + (0 + 4) + (4 + 0) = 10
    fd = frechet_distance(torch.tensor([1.0, 0.0, 2.0]), torch.diag(torch.tensor([1.0, 9.0, 4.0])),
                          torch.tensor([0.0, 0.0, 0.0]), torch.diag(torch.tensor([4.0, 1.0, 4.0])))
    assert fd == pytest.approx(10.0)


def test_frechet_distance_matches_scipy_sqrtm_and_is_zero_for_identical_sets():
    g = torch.Generator().manual_seed(0)
    a = torch.randn(200, 6, generator=g) @ torch.randn(6, 6, generator=g)
    b = torch.randn(150, 6, generator=g) @ torch.randn(6, 6, generator=g) + 0.3
    (ma, ca), (mb, cb) = gaussian_fit(a), gaussian_fit(b)
    root = scipy.linalg.sqrtm(ca.numpy() @ cb.numpy()).real
    expected = float(((ma - mb) ** 2).sum()) + float(np.trace(ca.numpy() + cb.numpy() - 2 * root))
    assert frechet_distance(ma, ca, mb, cb) == pytest.approx(expected, rel=1e-8)
    assert 0 <= frechet_distance(ma, ca, ma, ca) < 1e-8
    few = gaussian_fit(a[:4])  # rank-deficient covariance: still ~0 against itself
    assert 0 <= frechet_distance(*few, *few) < 1e-6 * float(few[1].trace())
    with pytest.raises(ValueError, match="at least 2"):
        gaussian_fit(a[:1])


@pytest.mark.slow  # the classifier fixture trains the default classifier (300 steps)
def test_class_acc_and_fd_separate_real_digits_from_noise(classifier, data):
    model = EvalModel(classifier, data.eval_images, data.eval_labels, "cpu", train_features(classifier, data, "cpu"))
    real = model.metrics(*model.describe(data.eval_images, data.eval_labels), data.eval_labels)
    assert real["eval/class_acc"] > 0.95 and 0 <= real["eval/fd"] < 1e-4
    assert real["eval/precision"] == real["eval/recall"] == real["eval/coverage"] == 1
    assert real["eval/diversity"] == pytest.approx(1)
    train = model.metrics(*model.describe(data.train_images[:359], data.train_labels[:359]), data.train_labels[:359])
    noise = model.metrics(*model.describe(noise_images(359), data.eval_labels), data.eval_labels)
    assert train["eval/class_acc"] > 0.95
    assert noise["eval/class_acc"] < 0.3  # chance is 0.1
    assert noise["eval/fd"] > 20 * train["eval/fd"] > 0
    # noise collapses to one small region of feature space (diversity ~0.4), part of which lies inside the largest
    # k-NN balls of the real manifold: some of it counts as precise (0.4-0.6 by classifier), none of it covers data
    assert train["eval/precision"] > noise["eval/precision"] + 0.2
    assert noise["eval/recall"] < 0.05 < 0.8 < train["eval/recall"]
    assert noise["eval/coverage"] < 0.05 < 0.8 < train["eval/coverage"]
    assert noise["eval/density"] < train["eval/density"]
    assert noise["eval/diversity"] < 0.5 * train["eval/diversity"]
    # copies of the train split are what only eval/memorization sees: held-out digits sit at its 5 % by construction
    assert train["eval/memorization"] == 1 and real["eval/memorization"] == pytest.approx(0.05, abs=1 / 359)
    assert noise["eval/memorization"] < 0.05


@pytest.mark.slow
def test_tiny_run_reports_fd_and_class_acc_without_changing_the_eval_reward(tiny, tmp_path, tb_scalars):
    tiny = [o for o in tiny if not o.startswith("eval.classifier_model.")]  # the default classifier, fully trained
    summary = train_rl_loop(compose_config(tiny), tmp_path / "on")
    for entry in summary["history"]:
        assert 0 <= entry["eval/class_acc"] <= 1 and entry["eval/fd"] > 0
        assert 0 <= entry["eval/precision"] <= 1 and 0 <= entry["eval/recall"] <= 1 and entry["eval/diversity"] > 0
        assert 0 <= entry["eval/coverage"] <= 1 and entry["eval/density"] >= 0 and 0 <= entry["eval/memorization"] <= 1
    for metric in ("precision", "recall", "density", "coverage", "diversity", "memorization"):
        assert summary[f"eval_{metric}_before"] == summary["history"][0][f"eval/{metric}"]
        assert tb_scalars(tmp_path / "on", f"eval/{metric}")[-1] == pytest.approx(summary[f"eval_{metric}_after"])
    assert summary["eval_fd_before"] == summary["history"][0]["eval/fd"]
    assert summary["eval_class_acc_after"] == summary["history"][-1]["eval/class_acc"]
    assert summary["eval_classifier_accuracy"] > 0.95
    assert json.loads((tmp_path / "on" / "summary.json").read_text())["history"] == summary["history"]

    without = train_rl_loop(compose_config([*tiny, "eval.classifier=false"]), tmp_path / "off")
    assert "eval/fd" not in without["history"][0] and "eval_fd_before" not in without
    assert [h["eval/reward"] for h in without["history"]] == [h["eval/reward"] for h in summary["history"]]


@pytest.mark.slow  # the classifier fixture trains the default classifier (300 steps)
def test_class_consistency_prefers_the_true_class(classifier, data, cache_dir):
    reward_fn = instantiate(compose_config([f"cache_dir={cache_dir}", "reward=class_consistency"]).reward)
    images, labels = data.eval_images[:32], data.eval_labels[:32]
    right, components = reward_fn(images, None, {"labels": labels})
    wrong, _ = reward_fn(images, None, {"labels": (labels + 1) % 10})
    assert reward_fn.classifier.model.source != classifier.source  # its own classifier, never the judge
    assert right.shape == (32,) and components["class_prob"] is right
    assert ((right >= 0) & (right <= 1)).all() and right.mean() > 0.9 and (right > wrong).float().mean() > 0.95
    unconditional, _ = reward_fn(images, None, {"labels": torch.full((32,), -1)})
    assert torch.allclose(unconditional, reward_fn.classifier.model(images).softmax(1).amax(1))
    with pytest.raises(ValueError, match="meta\\['labels'\\]"):
        reward_fn(images, None, {})


@pytest.mark.slow  # the classifier fixture trains the default classifier (300 steps)
def test_perceptual_digits_is_zero_for_identical_and_grows_with_changes(classifier, data, cache_dir):
    reward_fn = instantiate(compose_config([f"cache_dir={cache_dir}", "reward=perceptual_digits"]).reward)
    images = data.eval_images[:16]
    same, components = reward_fn(images, images.clone())
    assert torch.allclose(same, torch.zeros(16), atol=1e-6) and "neg_perceptual_digits" in components
    shifted, _ = reward_fn(torch.roll(images, 3, dims=3), images)
    noised, _ = reward_fn((images + 0.5 * noise_images(16)).clamp(-1, 1), images)
    assert (shifted < 0).all() and (noised < 0).all()
    other, _ = reward_fn(data.eval_images[16:32], images)  # other digits are further than small changes
    assert other.mean() < noised.mean() < 0
    distance = perceptual_distance(classifier, noise_images(4), -noise_images(4, seed=1))
    assert ((distance > 0) & (distance <= 2)).all()


class FixedLogits(torch.nn.Module):
    """A stand-in classifier: each image's logits are its first pixels, so the class probabilities are set by hand."""

    def forward(self, images):
        return images.flatten(1)[:, :3]  # [N, 3]


def test_class_consistency_threshold_accepts_or_rejects(data, tmp_path):
    """Two samples asked for class 0 with p(0) = 0.9 and 0.5, one asked for class 2 with p(2) = 0.2 (hand-computed
    softmaxes): by the probability, and accepted at a threshold of 0.5 (the boundary included)."""
    logits = torch.tensor([[math.log(9), 0.0, -math.inf], [0.0, 0.0, -math.inf], [math.log(3), 0.0, 0.0]])
    images = torch.nn.functional.pad(logits, (0, 1021)).view(3, 1, 32, 32)
    labels = torch.tensor([0, 0, 2])
    by_prob = ClassConsistencyReward(data, TINY_TRAIN, tmp_path)
    by_prob.classifier.get = lambda device: FixedLogits()
    assert torch.allclose(by_prob(images, None, {"labels": labels})[0], torch.tensor([0.9, 0.5, 0.2]))
    accept = ClassConsistencyReward(data, TINY_TRAIN, tmp_path, threshold=0.5)
    accept.classifier.get = lambda device: FixedLogits()
    reward, components = accept(images, None, {"labels": labels})
    assert reward.tolist() == [1.0, 1.0, 0.0]
    assert torch.allclose(components["class_prob"], torch.tensor([0.9, 0.5, 0.2]))  # logged as it was
    for bad in (0.0, 1.5):
        with pytest.raises(ValueError, match=f"reward.threshold must be in \\(0, 1\\].*got {bad}"):
            ClassConsistencyReward(data, TINY_TRAIN, tmp_path, threshold=bad)


def test_rewards_build_the_classifier_lazily(data, tmp_path):
    for reward_cls in (ClassConsistencyReward, PerceptualDigitsReward):
        reward_cls(data, TINY_TRAIN, tmp_path)
    assert not list(tmp_path.iterdir())  # nothing trained until the first call
