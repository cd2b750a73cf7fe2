"""The judge's independence: eval/* come from eval.classifier_model, which no reward reads."""

import logging

import pytest
import torch

from rlar.config.store import compose_config
from rlar.config.validate import ConfigError, check_config
from rlar.data.digits import DigitsData
from rlar.eval.model.build import build_eval_classifier
from rlar.eval.model.independence import rewards_reading_the_judge
from rlar.reward.classifier import LazyClassifier

BRIEF = {"steps": 3, "batch_size": 8}  # learns nothing: only which model is built matters here

READERS = {"class_consistency": "reward.classifier", "perceptual_digits": "reward.classifier",
           "loo_fd": "reward.classifier", "discriminator": "reward.classifier",
           "vapi_digits": "reward.components.perceptual_digits.classifier",
           "perceptual_efficiency": "reward.components.perceptual_digits.classifier",
           "class_loo_fd": "reward.components.fd.classifier",
           "discriminator_loo_fd": "reward.components.disc.classifier",
           "discriminator_loo_fd_class": "reward.components.cls.classifier"}


@pytest.mark.parametrize("option", sorted(READERS))
def test_classifier_rewards_default_to_another_seed_than_the_judge(option):
    cfg = compose_config([f"reward={option}"] + (["experiment=arpg_schedule"] if "efficiency" in option else []))
    node = cfg
    for key in READERS[option].split("."):
        node = node[key]
    assert node.train.seed != cfg.eval.classifier_model.train.seed
    assert rewards_reading_the_judge(cfg) == []
    check_config(cfg)


@pytest.mark.parametrize("overrides,path", [
    (["reward=class_consistency", "reward.classifier.train.seed=0"], "reward.classifier"),
    (["reward=perceptual_digits", "eval.classifier_model.train.seed=1"], "reward.classifier"),
    (["reward=loo_fd", "reward.classifier=${eval.classifier_model}"], "reward.classifier"),
    (["reward=discriminator", "reward.classifier.train.seed=0"], "reward.classifier"),
    (["reward=vapi_digits", "reward.components.perceptual_digits.classifier=${eval.classifier_model}"],
     "reward.components.perceptual_digits.classifier"),
])
def test_a_reward_reading_the_judge_is_refused_before_any_work(overrides, path):
    cfg = compose_config(overrides)
    assert rewards_reading_the_judge(cfg) == [path]
    with pytest.raises(ConfigError, match=f"{path} is the judge's classifier"):
        check_config(cfg)


def test_without_a_judge_nothing_is_refused():
    assert rewards_reading_the_judge(compose_config(["reward=class_consistency", "reward.classifier.train.seed=0",
                                                     "eval.classifier=false"])) == []


def test_the_reward_classifier_is_another_cached_model(tmp_path, caplog):
    data = DigitsData()
    with caplog.at_level(logging.INFO, logger="rlar.eval.model.build"):
        judge = build_eval_classifier(data, tmp_path, {"train": BRIEF})
        reward = LazyClassifier(data, {"train": BRIEF}, tmp_path).get("cpu")
    built = [r.getMessage().split(" ")[:2] for r in caplog.records if r.name == "rlar.eval.model.build"]
    assert built == [["judge", "classifier"], ["reward", "classifier"]]  # the log says which it built
    assert reward.source != judge.source and len(list(tmp_path.rglob("*.pt"))) == 2
    assert not torch.equal(reward.head.weight, judge.head.weight)
    same = LazyClassifier(data, {"train": {**BRIEF, "seed": 0}}, tmp_path).get("cpu")
    assert same.source == judge.source  # the spec is the key: what the config check refuses
