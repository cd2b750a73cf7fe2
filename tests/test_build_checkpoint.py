"""A cache build stopped by a signal resumes where it stopped and ends with the weights of a build never stopped
(docs/distributed.md, stop signals): each training loop of the cache, and the cache's own bookkeeping."""

import pytest
import torch
from train_split import TrainSplit

from rlar.eval.model.classifier import DigitsClassifier
from rlar.eval.model.train import train_classifier
from rlar.policy.gpt import GPT
from rlar.policy.prior import pretrain_gpt
from rlar.runtime.build_checkpoint import BuildCheckpoint
from rlar.runtime.cache import build_thread_count, build_threads, cached_artifact
from rlar.runtime.stop_signals import Stopped, StopRequest
from rlar.tokenizer.digits_vq import DigitsVQ, train_digits_vq

STEPS = 64  # the tokenizer restarts unused codes after 50 steps: a stop at 40 carries its usage counts


class SignalAt:
    """A progress bar that marks a stop signal as received when step ``at`` of the loop is done."""

    def __init__(self, stop: StopRequest, at: int):
        self.stop, self.at, self.done = stop, at, 0

    def update(self, n: int) -> None:
        self.done += n
        if self.done == self.at:
            self.stop.received = "SIGTERM"

    def set_postfix(self, **_) -> None:
        pass


def images():
    return torch.rand(32, 1, 32, 32, generator=torch.Generator().manual_seed(2)) * 2 - 1  # [32, 1, 32, 32]


def tokenizer_loop(progress, checkpoint):
    torch.manual_seed(0)
    model = DigitsVQ(codebook_size=64, hidden=16)  # more codes than a few batches use: some restart
    train_digits_vq(model, images(), STEPS, 3e-3, 8, torch.Generator().manual_seed(0), progress, checkpoint)
    return model.state_dict(), []


def classifier_loop(progress, checkpoint):
    torch.manual_seed(0)
    model = DigitsClassifier(width=8)
    data = TrainSplit(images(), torch.arange(32) % 10)
    train_classifier(model, data.train_batches, data.train_labels, STEPS, 2e-3, 16, 2, torch.Generator().manual_seed(0),
                     progress, checkpoint)
    return model.state_dict(), []


def prior_loop(progress, checkpoint):
    torch.manual_seed(0)
    policy = GPT(vocab_size=8, block_size=6, num_classes=2, n_layer=1, n_head=2, n_embd=16, dropout=0.1)
    codes = torch.randint(8, (32, 6), generator=torch.Generator().manual_seed(1))  # [32, 6]
    losses = pretrain_gpt(policy, codes, torch.arange(32) % 2, STEPS, 1e-2, 8, 0.1, torch.Generator().manual_seed(0),
                          progress, checkpoint=checkpoint)
    return policy.state_dict(), losses


@pytest.mark.parametrize("loop", [tokenizer_loop, classifier_loop, prior_loop])
@pytest.mark.parametrize("at", [1, 40, STEPS - 1])
def test_a_loop_stopped_at_any_step_resumes_to_the_weights_of_one_never_stopped(loop, at, tmp_path):
    never_stopped, losses = loop(None, None)
    stop = StopRequest()
    checkpoint = BuildCheckpoint(tmp_path / "entry.partial.pt", "entry", stop)
    with pytest.raises(Stopped, match=f"stopped by SIGTERM while building entry, after step {at} of {STEPS}"):
        loop(SignalAt(stop, at), checkpoint)
    assert torch.load(checkpoint.path, weights_only=True)["step"] == at
    resumed_progress = SignalAt(StopRequest(), at=-1)
    resumed, resumed_losses = loop(resumed_progress, BuildCheckpoint(checkpoint.path, "entry", StopRequest()))
    assert resumed_progress.done == STEPS  # the bar starts at the steps done
    assert resumed.keys() == never_stopped.keys()
    assert all(torch.equal(resumed[k], never_stopped[k]) for k in never_stopped)
    assert resumed_losses == losses


def test_a_signal_in_the_last_step_finishes_the_build_and_then_stops(tmp_path):
    stop = StopRequest()
    checkpoint = BuildCheckpoint(tmp_path / "entry.partial.pt", "entry", stop)
    state, _ = prior_loop(SignalAt(stop, STEPS), checkpoint)  # no Stopped: the loop is done
    assert not checkpoint.path.exists() and state


def test_a_saved_state_that_does_not_fit_is_logged_and_the_build_starts_over(tmp_path, caplog):
    stop = StopRequest()
    path = tmp_path / "entry.partial.pt"
    with pytest.raises(Stopped):
        prior_loop(SignalAt(stop, 4), BuildCheckpoint(path, "entry", stop))
    saved = torch.load(path, weights_only=True)
    saved["state"]["optimizer"]["param_groups"] = []  # from a loop that trained other parameters
    torch.save(saved, path)
    never_stopped, losses = prior_loop(None, None)
    rebuilt, rebuilt_losses = prior_loop(None, BuildCheckpoint(path, "entry", StopRequest()))
    assert "entry: cannot resume from" in caplog.text and "building it from the start" in caplog.text
    assert all(torch.equal(rebuilt[k], never_stopped[k]) for k in never_stopped) and rebuilt_losses == losses


def test_the_cache_keeps_no_entry_of_a_stopped_build_and_drops_the_saved_state_when_done(tmp_path):
    def build(checkpoint, stop_at=None):
        if stop_at is not None:
            checkpoint.stop.received = "SIGINT"  # as the signal handler would
        state, losses = prior_loop(SignalAt(checkpoint.stop, stop_at or -1), checkpoint)
        return state, {"final_loss": losses[-1]}

    with pytest.raises(Stopped, match="stopped by SIGINT while building prior"):
        cached_artifact(tmp_path, "prior", {"n": 1}, lambda checkpoint: build(checkpoint, stop_at=3))
    assert [p.name.split("-")[0] for p in tmp_path.iterdir()] == ["prior"]  # the saved state only
    assert next(tmp_path.iterdir()).name.endswith(".partial.pt")
    state, path = cached_artifact(tmp_path, "prior", {"n": 1}, build)
    assert sorted(p.suffix for p in tmp_path.iterdir()) == [".json", ".pt"] and path.is_file()
    with build_threads(build_thread_count()):  # the cache build's thread count, whatever the test process's
        never_stopped, _ = prior_loop(None, None)
    assert all(torch.equal(state[k], never_stopped[k]) for k in never_stopped)


def test_a_signal_after_the_last_step_stops_once_the_entry_is_written(tmp_path):
    def build(checkpoint):
        checkpoint.stop.received = "SIGTERM"  # e.g. while the held-out loss is computed
        return {"w": torch.ones(1)}, {}

    with pytest.raises(Stopped, match="after its last step: cached at"):
        cached_artifact(tmp_path, "probe", {"n": 1}, build)
    state, _ = cached_artifact(tmp_path, "probe", {"n": 1}, lambda checkpoint: pytest.fail("built again"))
    assert torch.equal(state["w"], torch.ones(1))
