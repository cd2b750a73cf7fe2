"""Which rewards a reward server serves: one that scores each sample alone, and never one that scores a call's samples
together or learns across calls (a remote client scores a batch in chunks, and no checkpoint saves a server's state);
with no reward chosen, the server's default is one it can serve."""

import re
from pathlib import Path

import pytest
import torch
from starlette.testclient import TestClient
from train_split import TrainSplit

from rlar.contracts import Reward
from rlar.reward.efficiency import EfficiencyReward
from rlar.reward.loo_fd import LeaveOneOutFDReward
from rlar.reward.mixture import WeightedReward
from rlar.reward.reconstruction import ReconstructionReward
from rlar.reward.remote import server
from rlar.reward.remote.app import RewardService, UnservableReward, create_app
from rlar.reward.remote.wire import decode_scores, encode_request
from rlar.runtime.hardware import Hardware


class Counting(Reward):
    """Scores each sample alone, and counts its calls in its ``state_dict()``: state a server would keep."""

    def __init__(self):
        self.calls = 0

    def __call__(self, images, targets=None, meta=None):
        self.calls += 1
        return images.flatten(1).mean(1), {}

    def state_dict(self) -> dict:
        return {"calls": self.calls}


def test_a_mix_with_loo_fd_is_refused_naming_the_component_and_the_fix():
    mix = WeightedReward({"l2": ReconstructionReward("l2"), "fd": LeaveOneOutFDReward(TrainSplit(None, None), None)},
                         {"l2": 1.0, "fd": 1.0})
    with pytest.raises(UnservableReward, match=r"reward=my_mix cannot be served: .*\(reward\.components\.fd "
                                               r"\(LeaveOneOutFDReward\)\).*run it in-process instead "
                                               r"\(reward=my_mix in the run, not reward=remote\)"):
        create_app(RewardService(mix, "my_mix", "rlar.reward.mixture.WeightedReward", "cpu"))


def test_a_reward_that_keeps_state_is_refused_though_it_scores_each_sample_alone():
    with pytest.raises(UnservableReward, match=r"reward=counting cannot be served: .*\(reward \(Counting\)\)"):
        RewardService(Counting(), "counting", "Counting", "cpu")


class FrozenNet(torch.nn.Module, Reward):
    """A reward that is a module: its state_dict is its frozen weights, no state across calls."""

    def __init__(self):
        super().__init__()
        self.scale = torch.nn.Parameter(torch.ones(()), requires_grad=False)

    def __call__(self, images, targets=None, meta=None):
        return self.scale * images.flatten(1).mean(1), {}


def test_a_mix_that_z_scores_over_the_call_is_refused_and_a_module_reward_is_served():
    parts = {"l2": ReconstructionReward("l2"), "l1": ReconstructionReward("l1")}
    with pytest.raises(UnservableReward, match=r"\(reward \(WeightedReward, normalize=true\)\)"):
        RewardService(WeightedReward(parts, {"l2": 1.0, "l1": 1.0}, normalize=True), "mix", "x", "cpu")
    assert RewardService(FrozenNet(), "frozen", "FrozenNet", "cpu").name == "frozen"


class SelfTraining(torch.nn.Module, Reward):
    """A module reward that learns as it scores: its weight moves toward each call's mean pixel (state in weights)."""

    def __init__(self):
        super().__init__()
        self.center = torch.nn.Parameter(torch.zeros(()), requires_grad=False)

    def __call__(self, images, targets=None, meta=None):
        self.center.add_(0.1 * (images.mean() - self.center))
        return -(images.flatten(1).mean(1) - self.center).abs(), {}


def test_a_module_reward_that_changes_as_it_scores_is_refused_at_the_warm_up():
    with pytest.raises(UnservableReward, match=r"reward=self cannot be served: scoring the warm-up batch changed "
                                               r"its weights or buffers \(reward\.center\)"):
        RewardService(SelfTraining(), "self", "SelfTraining", "cpu").warm_up((2, 1, 8, 8))
    inside = WeightedReward({"l2": ReconstructionReward("l2"), "norm": BatchNormed()}, {"l2": 1.0, "norm": 1.0})
    with pytest.raises(UnservableReward, match=r"reward\.components\.norm\.norm\.running_mean"):
        RewardService(inside, "mix", "x", "cpu").warm_up((2, 1, 8, 8))  # a batch norm left in train mode
    RewardService(FrozenNet(), "frozen", "FrozenNet", "cpu").warm_up((2, 1, 8, 8))  # frozen weights: served
    holder = Holding()
    holder.net = SelfTraining()  # a reward that is no module, holding one that learns
    with pytest.raises(UnservableReward, match=r"\(reward\.net\.center\)"):
        RewardService(holder, "holder", "x", "cpu").warm_up((2, 1, 8, 8))


class Holding(Reward):
    def __call__(self, images, targets=None, meta=None):
        return self.net(images)


class BuiltOnFirstCall(Reward):
    """Builds its (frozen) network when it first scores, as a reward that learns its input's shape then."""

    def __call__(self, images, targets=None, meta=None):
        if not hasattr(self, "net"):
            self.net = torch.nn.Linear(images[0].numel(), 1)
        return self.net(images.flatten(1))[:, 0].detach(), {}


def test_a_network_built_as_the_reward_first_scores_is_not_taken_for_a_change():
    RewardService(BuiltOnFirstCall(), "built", "x", "cpu").warm_up((2, 1, 8, 8))  # a KeyError before


class BatchNormed(torch.nn.Module, Reward):
    def __init__(self):
        super().__init__()
        self.norm = torch.nn.BatchNorm2d(1)

    def __call__(self, images, targets=None, meta=None):
        return self.norm(images).flatten(1).mean(1), {}


@pytest.mark.parametrize("overrides,served", [
    ([], "ClassConsistencyReward"),  # the run's default reward, which a server cannot serve
    (["reward.classifier.train.steps=3"], "ClassConsistencyReward"),  # its settings
    (["experiment=llamagen_t2i"], "CLIPReward"),  # an experiment's own reward stays
    (["reward=ssim"], "SSIMReward"),
])
def test_the_server_serves_class_consistency_where_neither_a_reward_nor_an_experiment_is_chosen(overrides, served):
    cfg, _ = server.served_config(overrides)
    assert cfg.reward._target_.endswith(served)


def test_a_mix_that_scores_each_sample_alone_is_served_as_in_process():
    mix = WeightedReward({"l2": ReconstructionReward("l2"), "l1": ReconstructionReward("l1")}, {"l2": 1.0, "l1": 0.5})
    images = torch.rand(3, 1, 4, 4, generator=torch.Generator().manual_seed(0)) * 2 - 1  # [N, C, H, W]
    targets = torch.zeros_like(images)
    with TestClient(create_app(RewardService(mix, "mix", "x", "cpu"))) as app:
        answer = app.post("/score", content=encode_request(images, targets, None))
    assert answer.status_code == 200
    scores, parts = decode_scores(answer.json(), 3)
    expected = -images.square().flatten(1).mean(1) - 0.5 * images.abs().flatten(1).mean(1)  # by hand: targets are 0
    assert torch.allclose(scores, expected, atol=1e-6) and set(parts) == {"l2", "l1"}


class Prompted(Reward):
    """Scores each sample by its prompt's length: a prompt reward (compositional, CLIP) reads meta['prompts']."""

    def __call__(self, images, targets=None, meta=None):
        return torch.tensor([float(len(p)) for p in meta["prompts"]]), {}


@pytest.mark.parametrize("reward, component", [(EfficiencyReward(), "efficiency"), (Prompted(), None)])
def test_the_warm_up_gives_the_decoding_steps_and_the_prompts_a_reward_may_read(reward, component):
    """The warm-up's meta held labels alone: efficiency (steps) and compositional (prompts) stopped the server."""
    service = RewardService(reward, "r", "r", "cpu")
    service.warm_up((2, 1, 8, 8))
    assert service.components == ({component} if component else set()) and service.served == 0


def test_the_server_refuses_loo_fd_before_serving(monkeypatch, capsys, tmp_path):
    monkeypatch.setattr(server.uvicorn, "run", lambda *args, **kwargs: pytest.fail("the server started serving"))
    # the process-wide steps of a server's start: not this test worker's random streams and import path
    monkeypatch.setattr(Hardware, "seed_everything", lambda self: None)
    monkeypatch.setattr(server, "importable", lambda: None)
    assert server.main(["reward=loo_fd", f"cache_dir={tmp_path}"]) == 2
    error = capsys.readouterr().err
    assert error.startswith("rlar-reward-server: reward=loo_fd cannot be served: ")
    assert "(reward=loo_fd in the run, not reward=remote)" in error


@pytest.mark.slow
def test_with_no_reward_chosen_the_server_serves_class_consistency(monkeypatch, tmp_path):
    served = []
    monkeypatch.setattr(server.uvicorn, "run", lambda app, **kwargs: served.append(app))
    assert server.main([f"cache_dir={tmp_path}", "reward.classifier.train.steps=3"]) == 0  # the run's default: refused
    (app,) = served
    with TestClient(app) as client:
        info = client.get("/info").json()
    assert info["reward"] == "class_consistency" and info["target"].endswith("ClassConsistencyReward")


def test_info_holds_the_keys_the_docs_list():
    with TestClient(create_app(RewardService(lambda images, targets, meta: (images.flatten(1).sum(1), {}), "sum", "sum",
                                             "cpu"))) as client:
        info = client.get("/info").json()
    documented = Path(__file__).resolve().parents[1] / "docs" / "remote_rewards.md"
    listed = re.search(r"`GET /info`: `\{(.*?)\}`", documented.read_text(), re.S).group(1)
    assert sorted(info) == sorted(re.findall(r'"(\w+)"', listed))
