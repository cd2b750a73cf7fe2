"""rlar.studies.filter_ceiling: which draws the filtered policy keeps, and that the judge reads exactly those."""

import json
import socket
from types import SimpleNamespace

import pytest
import torch

from rlar.config.store import compose_config
from rlar.reward.remote.client import RemoteReward
from rlar.studies import filter_ceiling
from rlar.studies.filter_ceiling import accepted_first, check_scores_on_its_own, kept_metrics


def test_accepted_first_keeps_the_first_accepted_draws_then_tops_up_with_rejected_ones():
    accepted = torch.tensor([[False, True, False, True, True],
                             [False, False, False, False, True],
                             [True, True, True, True, True]])
    assert accepted_first(accepted, 2).tolist() == [[1, 3], [4, 0], [0, 1]]
    assert accepted_first(accepted, 5)[1].tolist() == [4, 0, 1, 2, 3]
    with pytest.raises(ValueError, match="--draws must be at least eval.samples_per_item"):
        accepted_first(accepted, 6)


class Recorder:
    """Stands in for the judge: returns what it was given."""

    def metrics(self, features, hits, labels, per_item=1):
        return {"features": features, "hits": hits, "labels": labels, "per_item": per_item}


def test_kept_metrics_reads_the_kept_draws_of_each_item_with_its_class():
    n, draws = 3, 4
    features = torch.arange(n * draws, dtype=torch.float).view(n, draws, 1).expand(n, draws, 2)  # item*4 + draw
    hits = torch.arange(n * draws).view(n, draws) % 3 == 0
    keep = torch.tensor([[2, 0], [3, 1], [0, 2]])
    seen = kept_metrics(Recorder(), features, hits, torch.tensor([7, 8, 9]), keep)
    assert seen["features"][:, 0].tolist() == [2, 0, 7, 5, 8, 10]
    assert seen["hits"].tolist() == [False, True, False, False, False, False]
    assert seen["labels"].tolist() == [7, 7, 8, 8, 9, 9] and seen["per_item"] == 2


class Scorer:
    """A reward that scores on its own, or (``learns``) one that builds state on its first call."""

    learning = True

    def __init__(self, learns: bool):
        self.learns, self.state = learns, {}

    def __call__(self, images, targets=None, meta=None):
        if self.learns:
            self.state = {"buffer": images}
        return images.flatten(1).mean(1), {}

    def state_dict(self):
        return self.state


def test_a_reward_that_learns_across_calls_is_refused_and_its_learning_flag_restored():
    images, labels = torch.zeros(2, 1, 4, 4), torch.tensor([0, 1])
    check_scores_on_its_own(Scorer(learns=False), images, labels)
    learner = Scorer(learns=True)
    with pytest.raises(ValueError, match="learns across calls.*reward=class_consistency"):
        check_scores_on_its_own(learner, images, labels)
    assert learner.learning is True


@pytest.mark.parametrize("reward, reader", [("l2", "reward"), ("vapi", "reward.components.")])
def test_a_reward_that_compares_with_input_images_is_refused_before_anything_is_built(reward, reader, monkeypatch):
    """Free-running samples have no input image: l2 failed deep in the reward, after the sampling."""
    monkeypatch.setattr(filter_ceiling, "filter_ceiling", None)  # nothing may be built, sampled or scored
    with pytest.raises(SystemExit, match=f"{reader}.*compares each sample with its input image.*"
                                         "reward=class_consistency"):
        filter_ceiling.main([f"reward={reward}"])



def test_the_run_s_inception_settings_are_not_checked_by_a_study_that_builds_no_inception(tmp_path):
    """A run trained with eval.inception on another machine: its weights file is absent here, and the filter never
    reads it; the command goes on to its own checks (here: too few draws)."""
    inception = ["eval.inception.enabled=true", f"eval.inception.weights={tmp_path}/absent.pth"]
    with pytest.raises(SystemExit, match="--draws 1 must be at least eval.samples_per_item"):
        filter_ceiling.main([*inception, "--draws", "1"])


@pytest.mark.slow
def test_filter_json_keeps_the_unfiltered_draws_when_the_threshold_accepts_all_or_none(tiny, tmp_path, monkeypatch):
    """Through the command on the tiny default: a threshold below every class probability accepts every draw and one
    above them accepts none; either way the judge reads the first draws, so the filtered row is the policy's. The
    reward is closed when the study is done (a remote reward's client)."""
    from rlar.reward.classifier import ClassConsistencyReward
    from rlar.studies.filter_ceiling import main

    closed = []
    monkeypatch.setattr(ClassConsistencyReward, "close", lambda self: closed.append(self), raising=False)

    args = [*tiny, "reward=class_consistency", "reward.classifier.train.steps=20", "eval.samples_per_item=2",
            "--draws", "3", "--judge", "2"]
    for threshold, accepted in ((-1.0, 1.0), (1.0, 0.0)):
        record = main([*args, "--threshold", str(threshold), "--out", str(tmp_path)])
        name = f"filter-draws3-thr{threshold:g}-cfg*-temp*-seeds1234-1235-*.json"
        written = json.loads(next(tmp_path.glob(name)).read_text())
        assert written == json.loads(json.dumps(record))
        assert written["seeds"] == [1234, 1235] and written["accepted"]["values"] == [accepted, accepted]
        rollout = compose_config(tiny).rollout  # the run's sampling, recorded as used (not as null: not given)
        assert (written["cfg_scale"], written["temperature"]) == (rollout.cfg_scale, rollout.temperature)
        assert written["filtered"] == written["policy"]
        assert 0 <= written["policy"]["class_acc"]["mean"] <= 1 and written["policy"]["fd"]["mean"] > 0
    assert len(closed) == 2 and len(list(tmp_path.glob("filter-*.json"))) == 2  # each threshold's its own


class Describer:
    """Stands in for the judge's classifier: one feature per image, every draw a hit."""

    def describe(self, images, labels):
        return images.flatten(1)[:, :1], torch.ones(len(images), dtype=torch.bool)


def test_an_outage_of_the_reward_servers_stops_the_draws_after_max_consecutive_failures_batches(monkeypatch):
    with socket.socket() as s:  # a port no server listens on
        s.bind(("127.0.0.1", 0))
        dead = f"http://127.0.0.1:{s.getsockname()[1]}"
    monkeypatch.setattr(filter_ceiling, "generate_images", lambda *args: torch.zeros(12, 1, 8, 8))
    reward = RemoteReward([dead], retries=0, health_timeout_s=0.2, max_consecutive_failures=1)
    try:
        with pytest.raises(RuntimeError, match="max_consecutive_failures=1"):  # each batch of 4 draws is a round
            filter_ceiling.draw_and_read(None, None, reward, Describer(), torch.tensor([1, 2, 3]), 4, {},
                                         SimpleNamespace(batch_size=4), 0, "cpu")
    finally:
        reward.close()
