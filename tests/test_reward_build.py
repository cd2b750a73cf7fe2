"""A config's reward is built on one dataset: every component reading ``${data}`` shares the run's, and the
components reading one classifier share its train-split features."""

import contextlib

import pytest
import torch
from hydra.utils import instantiate
from omegaconf import OmegaConf
from omegaconf.errors import MissingMandatoryValue

import rlar.build
import rlar.reward.classifier
from rlar.build import build_run
from rlar.config.store import compose_config
from rlar.data.digits import DigitsData
from rlar.reward.build import build_reward, reads_run_data
from rlar.reward.classifier import asked_classifiers, build_classifiers, reward_classifier


@pytest.fixture
def data_builds(monkeypatch):
    """The list of DigitsData built while the test runs (one entry per construction)."""
    built = []
    real_init = DigitsData.__init__

    def counting_init(self, *args, **kwargs):
        built.append(self)
        real_init(self, *args, **kwargs)

    monkeypatch.setattr(DigitsData, "__init__", counting_init)
    return built


def component_data(reward) -> dict:
    return {name: component.classifier.data for name, component in reward.components.items()}


def test_the_default_rewards_three_components_read_one_dataset_built_once(cache_dir, data_builds):
    reward = build_reward(compose_config([f"cache_dir={cache_dir}"]))
    assert len(data_builds) == 1  # instantiating the reward config alone built it three times
    assert [data is data_builds[0] for data in component_data(reward).values()] == [True, True, True]


def test_the_runs_own_data_is_handed_to_every_component(cache_dir, data_builds):
    cfg = compose_config([f"cache_dir={cache_dir}"])
    data = instantiate(cfg.data)
    reward = build_reward(cfg, data)
    assert len(data_builds) == 1
    assert all(d is data for d in component_data(reward).values())


def test_a_component_given_other_data_builds_its_own(cache_dir, data_builds):
    cfg = compose_config([f"cache_dir={cache_dir}"])
    cfg.reward.components.fd.data = {**OmegaConf.to_container(cfg.data, resolve=True), "split_seed": 1}
    data = instantiate(cfg.data)
    own = component_data(build_reward(cfg, data))
    assert own["disc"] is data and own["cls"] is data
    assert own["fd"] is not data and len(data_builds) == 2
    assert not torch.equal(own["fd"].train_labels, data.train_labels)  # another split, as configured


def test_a_reward_reading_no_data_builds_none(data_builds):
    build_reward(compose_config(["reward=l2"]))
    assert data_builds == []


def test_the_components_on_one_classifier_share_it_and_read_the_train_features_once(cache_dir, monkeypatch):
    reward = build_reward(compose_config([f"cache_dir={cache_dir}"]))
    shared = {id(component.classifier) for component in reward.components.values()}
    assert len(shared) == 1  # one load, one held-out accuracy pass, one pass over the reference images
    data = reward.components["disc"].classifier.data
    calls = []
    real = rlar.reward.classifier.train_features

    def counting(model, data, device, chunk_size, limit):
        calls.append(chunk_size)
        return real(model, data, device, chunk_size, limit)

    monkeypatch.setattr(rlar.reward.classifier, "train_features", counting)
    settings = {"train": {"steps": 5}}
    first = reward_classifier(data, settings, str(cache_dir))
    assert reward_classifier(data, dict(settings), cache_dir) is first  # the cache dir as a Path too
    assert first.train_features("cpu", 256) is first.train_features("cpu", 256) and calls == [256]
    other = reward_classifier(data, {"train": {"steps": 6}}, str(cache_dir))
    assert other is not first and reward_classifier(data, settings, None) is not first  # other settings, cache
    first.train_features("cpu", 128)
    assert not torch.equal(other.train_features("cpu", 256), first.train_features("cpu", 256))
    assert calls == [256, 128, 256]  # another chunk size, another classifier


def test_a_run_hands_its_data_to_the_reward(tiny, data_builds, tmp_path):
    cfg = compose_config(tiny + ["hardware.num_threads=1"])
    hw = instantiate(cfg.hardware)
    run = build_run(cfg, hw, tmp_path)
    assert len(data_builds) == 1
    assert all(d is run.data for d in component_data(run.reward).values())


def test_a_reward_reading_no_data_is_built_first_and_fails_before_the_data_is_read(data_builds, tmp_path):
    assert reads_run_data(compose_config([])) and not reads_run_data(compose_config(["reward=l2"]))
    cfg = compose_config(["reward=clip", "hardware.num_threads=1"])  # no reward.model_path
    with pytest.raises(MissingMandatoryValue, match="model_path"):
        build_run(cfg, instantiate(cfg.hardware), tmp_path)
    assert data_builds == []


def test_a_run_builds_the_classifier_of_a_reward_on_its_own_data_while_the_other_ranks_wait(tiny, monkeypatch,
                                                                                            tmp_path):
    """A reward on data of its own (here the digits split at another fraction) is built before the run's data, and
    its classifier with the models, inside the block where rank 0 builds first: not at its first call, where under
    torchrun every rank would train it at once."""
    inside, built = [], []
    real_first, real_build = rlar.build.distributed.main_process_first, rlar.reward.classifier.LazyClassifier.build

    @contextlib.contextmanager
    def first():
        inside.append(True)
        with real_first():
            yield
        inside.pop()

    def build(self):
        built.append((self.data.eval_fraction, bool(inside)))
        return real_build(self)

    monkeypatch.setattr(rlar.build.distributed, "main_process_first", first)
    monkeypatch.setattr(rlar.reward.classifier.LazyClassifier, "build", build)
    own = "reward.data={_target_:rlar.data.digits.DigitsData,eval_fraction:0.3}"
    cfg = compose_config(tiny + ["reward=class_consistency", own, "reward.classifier.train.steps=5",
                                 "hardware.num_threads=1"])
    assert not reads_run_data(cfg)
    run = build_run(cfg, instantiate(cfg.hardware), tmp_path)
    assert run.reward.classifier.model is not None and built[0] == (0.3, True)


def test_the_classifiers_asked_for_in_a_block_are_those_of_its_rewards_on_any_data(cache_dir):
    ours, theirs = DigitsData(), DigitsData(eval_fraction=0.3)
    before = reward_classifier(ours, None, str(cache_dir))
    with asked_classifiers() as outer:
        with asked_classifiers() as inner:
            first = reward_classifier(theirs, None, str(cache_dir))
        again = reward_classifier(theirs, None, str(cache_dir))
    assert inner == [first] and outer == [first, again] and again is first and before not in outer
    assert build_classifiers(outer) == [first.model.source]  # each classifier once
    assert reward_classifier(ours, None, str(cache_dir)).model is None  # not asked for: left to its first call
