"""Rewards: full-reference metrics, LPIPS (offline), no-reference quality, the weighted mixture, and their configs."""

import math

import lpips
import pytest
import torch
from hydra.errors import ConfigCompositionException
from hydra.utils import instantiate
from torchmetrics.functional.image import peak_signal_noise_ratio, structural_similarity_index_measure
from torchvision import models
from train_split import TrainSplit

from rlar.config.store import CONF_DIR, compose_config
from rlar.contracts import Reward
from rlar.reward.classifier import ClassConsistencyReward
from rlar.reward.metrics import PSNRReward, SSIMReward
from rlar.reward.mixture import WeightedReward
from rlar.reward.perceptual import LPIPSReward
from rlar.reward.quality import ContrastReward, SaturationReward, SharpnessReward


def random_images(*shape, seed=0):
    return torch.rand(*shape, generator=torch.Generator().manual_seed(seed)) * 2 - 1


@pytest.mark.parametrize("shape", [(5, 1, 32, 32), (5, 3, 16, 16)])
def test_psnr_matches_torchmetrics_per_item(shape):
    x, y = random_images(*shape), random_images(*shape, seed=1)
    reward, components = PSNRReward()(x, y)
    expected = peak_signal_noise_ratio(x, y, data_range=2.0, reduction="none", dim=(1, 2, 3))
    assert reward.shape == (shape[0],) and reward.dtype == torch.float32
    assert torch.allclose(reward, expected, atol=1e-4)
    assert components["psnr"] is reward


def test_identical_images_give_finite_psnr():
    x = random_images(3, 1, 8, 8)
    reward, _ = PSNRReward()(x, x.clone())
    assert torch.allclose(reward, torch.full((3,), 10 * math.log10(4 / 1e-10)))


@pytest.mark.parametrize("reward", [PSNRReward(), SSIMReward()])
def test_metrics_keep_a_nan_item_nan(reward):
    x, y = random_images(3, 1, 32, 32), random_images(3, 1, 32, 32, seed=1)
    x[1, 0, 5, 5] = float("nan")
    assert reward(x, y)[0].isnan().tolist() == [False, True, False]


@pytest.mark.parametrize("shape", [(4, 1, 32, 32), (4, 3, 24, 24)])
def test_ssim_matches_torchmetrics_per_item(shape):
    x, y = random_images(*shape), random_images(*shape, seed=1)
    y[0] = x[0]  # one identical pair: ssim 1
    reward, components = SSIMReward()(x, y)
    expected = torch.stack([structural_similarity_index_measure(x[i:i + 1], y[i:i + 1], data_range=2.0)
                            for i in range(shape[0])])
    assert torch.allclose(reward, expected, atol=1e-5)
    assert reward[0].item() == pytest.approx(1.0, abs=1e-5)
    assert components["ssim"] is reward


@pytest.fixture(scope="module")
def random_lpips():
    return LPIPSReward("alex", pnet_rand=True)


@pytest.mark.parametrize("channels", [1, 3])
def test_lpips_random_backbone_is_batched_zero_on_identical_and_differentiable(random_lpips, channels):
    x = random_images(4, channels, 32, 32).requires_grad_()
    y = random_images(4, channels, 32, 32, seed=1)
    reward, components = random_lpips(x, y)
    assert reward.shape == (4,) and reward.dtype == torch.float32 and (reward < 0).all()
    assert components["neg_lpips"] is reward
    reward.sum().backward()
    assert x.grad is not None and x.grad.abs().sum() > 0
    assert torch.allclose(random_lpips(y, y)[0], torch.zeros(4))


def test_lpips_is_frozen(random_lpips):
    assert not random_lpips.model.training
    assert not any(p.requires_grad for p in random_lpips.model.parameters())


def test_lpips_without_backbone_weights_names_the_file_and_the_fixes(tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))  # an empty torch hub cache
    with pytest.raises(FileNotFoundError) as err:
        LPIPSReward("alex")
    message = str(err.value)
    for part in ("alexnet-owt-7be5be79.pth", str(tmp_path / "hub" / "checkpoints"), "reward.weights_path",
                 "reward.pnet_rand=true"):
        assert part in message
    with pytest.raises(FileNotFoundError, match="not found at /does/not/exist.pth"):
        LPIPSReward("alex", weights_path="/does/not/exist.pth")


def test_lpips_loads_the_backbone_as_lpips_does(tmp_path, monkeypatch):
    """A stand-in 'ImageNet' SqueezeNet in the hub cache: lpips' own loading and ours give the same distance."""
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    torch.manual_seed(0)
    weights = tmp_path / "hub" / "checkpoints" / "squeezenet1_1-b8a52dc0.pth"
    weights.parent.mkdir(parents=True)
    torch.save(models.squeezenet1_1().state_dict(), weights)
    with pytest.warns(UserWarning):  # torchvision's deprecation of lpips' `pretrained=True`
        reference = lpips.LPIPS(net="squeeze", verbose=False)  # loads from the cache, no download
    x, y = random_images(3, 3, 32, 32), random_images(3, 3, 32, 32, seed=1)
    expected = -reference(x, y).flatten()
    assert torch.allclose(LPIPSReward("squeeze")(x, y)[0], expected, atol=1e-6)
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "empty"))
    assert torch.allclose(LPIPSReward("squeeze", weights_path=str(weights))(x, y)[0], expected, atol=1e-6)


QUALITY = [SharpnessReward(), ContrastReward(), SaturationReward()]


def checkerboard(size=4):
    i = torch.arange(size)
    return ((i[:, None] + i[None, :]) % 2).float().mul(2).sub(1).view(1, 1, size, size)  # [-1, 1]


def test_quality_of_constant_and_checkerboard_images():
    constant = torch.full((1, 3, 6, 6), 0.3)
    for reward in QUALITY:
        score, components = reward(constant, None)
        assert score.tolist() == pytest.approx([0.0], abs=1e-7)
        assert components[reward.name] is score
    board = checkerboard()  # unit values 0/1: the Laplacian is -4 on a 1 and +4 on a 0
    assert SharpnessReward()(board, None)[0].item() == pytest.approx(16.0)
    assert ContrastReward()(board, None)[0].item() == pytest.approx(0.5)
    assert SaturationReward()(board, None)[0].item() == 0.0


def test_quality_by_hand_on_a_single_bright_pixel():
    x = -torch.ones(1, 1, 4, 4)
    x[0, 0, 1, 1] = 1.0  # unit image: one 1 among fifteen 0s
    # valid Laplacian [[-4, 1], [1, 0]]: mean -0.5, variance (3.5^2 + 1.5^2 + 1.5^2 + 0.5^2) / 4
    assert SharpnessReward()(x, None)[0].item() == pytest.approx(17 / 4)
    assert ContrastReward()(x, None)[0].item() == pytest.approx(math.sqrt(15) / 16)


def test_contrast_uses_luma_and_saturation_is_hsv():
    red_green = torch.tensor([[1.0, -1.0], [-1.0, 1.0], [-1.0, -1.0]]).view(1, 3, 1, 2)  # pure red | pure green
    assert ContrastReward()(red_green, None)[0].item() == pytest.approx((0.587 - 0.299) / 2)
    pixels = torch.tensor([[1.0, 1.0, -1.0, 0.0], [-1.0, 0.0, -1.0, 0.0], [-1.0, 0.0, -1.0, 0.0]])
    # unit RGB: (1, 0, 0) -> 1, (1, .5, .5) -> 0.5, black -> 0, gray -> 0
    assert SaturationReward()(pixels.view(1, 3, 2, 2), None)[0].item() == pytest.approx(1.5 / 4)


def test_quality_ignores_out_of_range_values_and_keeps_nan():
    board = checkerboard()
    nan = board.clone()
    nan[0, 0, 0, 0] = float("nan")
    for reward in QUALITY:
        assert torch.equal(reward(board * 3, None)[0], reward(board, None)[0])  # no reward for blow-up
        assert reward(torch.cat([board, nan]), None)[0].isnan().tolist() == [False, True]


class Fixed(Reward):
    """A stand-in reward returning fixed scores and one extra sub-component."""

    def __init__(self, scores):
        self.scores = torch.tensor(scores)

    def __call__(self, images, targets, meta=None):
        return self.scores, {"same": self.scores, "double": 2 * self.scores}


def test_mixture_weighted_sum_and_reported_components():
    mix = WeightedReward({"a": Fixed([1.0, 2.0, 3.0]), "b": Fixed([0.0, 10.0, -4.0])}, {"a": 2.0, "b": 0.5})
    total, components = mix(torch.zeros(3, 1, 2, 2), None)
    assert torch.allclose(total, torch.tensor([2.0, 9.0, 4.0]))
    assert sorted(components) == ["a", "a/double", "b", "b/double"]  # "same" is the score itself
    assert torch.equal(components["b/double"], torch.tensor([0.0, 20.0, -8.0]))


def test_closing_a_mixture_closes_each_component():
    closed = []
    parts = {name: Fixed([0.0]) for name in ("a", "b")}
    for name, part in parts.items():
        part.close = lambda name=name: closed.append(name)
    WeightedReward(parts, {"a": 1.0, "b": 0.0}).close()
    assert closed == ["a", "b"]  # a remote component's threads are released whatever its weight



def test_a_mixture_reports_what_each_component_reports_of_itself_under_its_name():
    server = Fixed([0.0])
    server.metrics = lambda: {"reward/remote_failed_items": 4.0}  # a remote component's service metrics
    mix = WeightedReward({"server": server, "local": Fixed([1.0])}, {"server": 1.0, "local": 1.0})
    assert mix.metrics() == {"reward/server/remote_failed_items": 4.0}

def test_mixture_normalize_z_scores_each_component():
    mix = WeightedReward({"a": Fixed([1.0, 2.0, 3.0]), "b": Fixed([5.0, 5.0, 5.0])}, {"a": 1.0, "b": 3.0},
                         normalize=True)
    total, components = mix(torch.zeros(3, 1, 2, 2), None)
    assert torch.allclose(total, torch.tensor([-1.0, 0.0, 1.0]))  # a: mean 2, unbiased std 1; b: zero std -> 0
    assert torch.equal(components["a"], torch.tensor([1.0, 2.0, 3.0]))  # reported raw


def test_mixture_nan_propagates_only_from_weighted_components():
    nan = float("nan")
    mix = WeightedReward({"a": Fixed([1.0, nan, 3.0, 5.0]), "b": Fixed([nan, 1.0, 1.0, 1.0])},
                         {"a": 1.0, "b": 0.0}, normalize=True)
    total, _ = mix(torch.zeros(4, 1, 2, 2), None)
    assert total.isnan().tolist() == [False, True, False, False]
    assert torch.allclose(total[[0, 2, 3]], torch.tensor([-1.0, 0.0, 1.0]))  # statistics over 1, 3, 5 only


class Counting(Fixed):
    """A stand-in reward that keeps state across calls (as a discriminator or moving averages do)."""

    calls = 0

    def __call__(self, images, targets, meta=None):
        self.calls += 1
        return super().__call__(images, targets, meta)

    def state_dict(self):
        return {"calls": self.calls}

    def load_state_dict(self, state):
        self.calls = state.get("calls", 0)


def test_mixture_state_holds_only_the_components_that_keep_state():
    stateless = WeightedReward({"a": Fixed([1.0]), "b": Fixed([2.0])}, {"a": 1.0, "b": 1.0})
    assert stateless.state_dict() == {}  # a checkpoint's empty reward entry: nothing learns across calls
    mix = WeightedReward({"a": Fixed([1.0]), "c": Counting([2.0])}, {"a": 1.0, "c": 1.0})
    mix(torch.zeros(1, 1, 2, 2), None)
    assert mix.state_dict() == {"c": {"calls": 1}}
    resumed = WeightedReward({"a": Fixed([1.0]), "c": Counting([2.0])}, {"a": 1.0, "c": 1.0})
    resumed.load_state_dict(mix.state_dict())
    assert resumed.components["c"].calls == 1


def test_mixture_builds_configs_and_checks_weights():
    mix = WeightedReward({"psnr": {"_target_": "rlar.reward.metrics.PSNRReward"}}, {"psnr": 1.0})
    assert isinstance(mix.components["psnr"], PSNRReward)
    with pytest.raises(ValueError, match="reward.weights"):
        WeightedReward({"a": Fixed([1.0])}, {"b": 1.0})


def compose_reward(*overrides):
    return compose_config(list(overrides)).reward


# built elsewhere, on what they need: live servers (tests/test_remote_reward.py), a model dir (test_reward_clip.py)
ELSEWHERE = {"remote", "clip"}
OFFLINE = {"lpips": ["reward.pnet_rand=true"], "vapi": ["reward.components.lpips.pnet_rand=true"]}
# the classifier-based rewards' own classifiers briefly trained, and the discriminator's first fit short
BRIEF = {"class_consistency": ["reward.classifier.train.steps=20"],
         "perceptual_digits": ["reward.classifier.train.steps=20"],
         "loo_fd": ["reward.classifier.train.steps=20"], "compositional": ["reward.classifier.train.steps=20"],
         "vapi_digits": ["reward.components.perceptual_digits.classifier.train.steps=20"],
         "perceptual_efficiency": ["reward.components.perceptual_digits.classifier.train.steps=20"],
         "discriminator": ["reward.classifier.train.steps=20", "reward.warmup_steps=5"],
         "discriminator_class": ["reward.components.disc.classifier.train.steps=20",
                                 "reward.components.disc.warmup_steps=5",
                                 "reward.components.cls.classifier.train.steps=20"],
         "compositional_discriminator": ["reward.components.comp.classifier.train.steps=20",
                                         "reward.components.disc.classifier.train.steps=20",
                                         "reward.components.disc.warmup_steps=5"],
         "class_loo_fd": ["reward.components.cls.classifier.train.steps=20",
                          "reward.components.fd.classifier.train.steps=20"],
         "discriminator_loo_fd": ["reward.components.disc.classifier.train.steps=20",
                                  "reward.components.disc.warmup_steps=5",
                                  "reward.components.fd.classifier.train.steps=20"],
         "discriminator_loo_fd_class": ["reward.components.disc.classifier.train.steps=20",
                                        "reward.components.disc.warmup_steps=5",
                                        "reward.components.fd.classifier.train.steps=20",
                                        "reward.components.cls.classifier.train.steps=20"]}


@pytest.fixture(scope="module")
def brief_classifier_cache(tmp_path_factory):
    return tmp_path_factory.mktemp("brief_classifiers")


@pytest.mark.parametrize("option", sorted(p.stem for p in (CONF_DIR / "reward").glob("*.yaml")
                                          if p.stem not in ELSEWHERE))
def test_every_reward_option_composes_and_scores_a_batch(option, brief_classifier_cache):
    # the classifier-based rewards read a briefly trained digits classifier, trained once in a cache of the module's
    overrides = [f"reward={option}", f"cache_dir={brief_classifier_cache}", *OFFLINE.get(option, []),
                 *BRIEF.get(option, [])]
    reward_fn = instantiate(compose_reward(*overrides))
    x, y = random_images(4, 1, 32, 32), random_images(4, 1, 32, 32, seed=1)
    meta = {"labels": torch.zeros(4, dtype=torch.long), "steps": torch.full((4,), 8),
            "prompts": ["a thick zero leaning right"] * 4}
    reward, components = reward_fn(x, y, meta)
    assert reward.shape == (4,) and reward.dtype == torch.float32 and reward.isfinite().all()
    assert all(v.shape == (4,) for v in components.values())


def test_mix_components_are_typed_by_their_schemas():
    cfg = compose_reward("reward=mix", "reward.components.l2.kind=l1")
    assert instantiate(cfg).components["l2"].kind == "l1"
    with pytest.raises(ConfigCompositionException, match="kernel"):
        compose_reward("reward=mix", "reward.components.ssim.kernel=3")


def test_an_accept_reject_class_reward_leaves_a_non_finite_image_unscored():
    reward = ClassConsistencyReward(TrainSplit(torch.zeros(2, 1, 2, 2), torch.arange(2)), None, threshold=0.5)
    reward.classifier.model = torch.nn.Flatten()  # the pixels are the logits of two classes
    images = torch.tensor([[4.0, 0.0], [0.0, 4.0], [float("nan"), 0.0]]).view(3, 1, 1, 2)
    scores, parts = reward(images, None, {"labels": torch.tensor([0, 0, 0])})
    assert scores[:2].tolist() == [1.0, 0.0] and scores[2].isnan() and parts["class_prob"][2].isnan()
