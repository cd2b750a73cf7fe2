"""Decoding and scoring in chunks (train.score_chunk_size) gives the rewards of one whole call; a reward that scores
a call's samples together is refused it."""

import pytest
import torch

from rlar.config.store import compose_config
from rlar.config.validate import ConfigError, check_config
from rlar.reward.reconstruction import ReconstructionReward


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


@pytest.mark.parametrize("chunk_size", [None, 4])
def test_scores_are_moved_to_the_tokens_device_whole_or_by_chunk(monkeypatch, chunk_size):
    from rlar.reward import scoring
    from rlar.tokenizer.digits_vq import DigitsVQ
    from rlar.tokenizer.frozen import FrozenTokenizer

    devices, checked = [], scoring.checked_output
    monkeypatch.setattr(scoring, "checked_output", lambda *args: devices.append(args[3]) or checked(*args))
    tokens = torch.randint(0, 16, (10, 64))
    scoring.decode_and_score(FrozenTokenizer(DigitsVQ(codebook_size=16, hidden=16)), CountingReward(), tokens,
                             torch.zeros(10, 1, 32, 32), {"labels": torch.arange(10)}, chunk_size)
    assert devices and all(device == tokens.device for device in devices)


def test_the_scoring_thread_starts_on_the_gpu_of_the_tokens(monkeypatch):
    """CUDA's current device is per thread: without this, a reward on a bare ``cuda`` device (torchrun's rank k on
    cuda:k) would copy the chunks of its worker thread to cuda:0, away from its weights."""
    from rlar.reward.scoring import same_device_as

    chosen = []
    monkeypatch.setattr(torch.cuda, "set_device", chosen.append)
    same_device_as(torch.device("cuda", 3))
    same_device_as(torch.device("cpu"))
    assert chosen == [torch.device("cuda", 3)]


class ChangingComponents(ReconstructionReward):
    """Call i reports the components ``names[i]`` (none: a remote chunk no server scored, its rewards NaN)."""

    def __init__(self, names):
        super().__init__("l2")
        self.names = iter(names)

    def __call__(self, images, targets, meta=None):
        names = next(self.names)
        rewards = super().__call__(images, targets, meta)[0] if names else torch.full((len(images),), float("nan"))
        return rewards, {name: torch.full((len(images),), float(i)) for i, name in enumerate(names)}


@pytest.mark.parametrize("names", [[(), ("a",), ("a", "b")], [("a", "b"), ("b",), ()]],
                         ids=["first-chunk-failed", "later-chunks-failed"])
def test_chunks_reporting_other_components_give_nan_rows(names):
    """Every component any chunk reports, NaN in the rows of the chunks that lack it, so a failed remote chunk
    is NaN rows (and the run goes on) rather than a KeyError or no components at all."""
    from rlar.reward.scoring import decode_and_score
    from rlar.tokenizer.digits_vq import DigitsVQ
    from rlar.tokenizer.frozen import FrozenTokenizer

    tokenizer = FrozenTokenizer(DigitsVQ(codebook_size=16, hidden=16))
    tokens, targets = torch.randint(0, 16, (10, 64)), torch.rand(10, 1, 32, 32) * 2 - 1  # [N, T], [N, C, H, W]
    _, rewards, components, _ = decode_and_score(tokenizer, ChangingComponents(names), tokens, targets, {},
                                                 chunk_size=4)
    rows = [slice(0, 4), slice(4, 8), slice(8, 10)]
    assert list(components) == list(dict.fromkeys(n for chunk in names for n in chunk))
    for name, column in components.items():
        assert column.shape == (10,)
        for chunk, rows_of_chunk in zip(names, rows, strict=True):
            assert column[rows_of_chunk].isnan().all() == (name not in chunk)
    for chunk, rows_of_chunk in zip(names, rows, strict=True):
        assert rewards[rows_of_chunk].isnan().all() == (not chunk)


def test_remote_chunk_no_server_scored_gives_nan_rows(monkeypatch):
    """The remote client reports no components for a call no server scored: chunked scoring NaN-fills them."""
    from rlar.reward.remote.client import RemoteReward
    from rlar.reward.scoring import decode_and_score
    from rlar.tokenizer.digits_vq import DigitsVQ
    from rlar.tokenizer.frozen import FrozenTokenizer

    def score_chunk(images, targets, meta, slot):  # the second call's only chunk: no server scored it
        n = len(images)
        return (None, None, 0) if slot == 1 else (torch.zeros(n), {"l2": torch.ones(n)}, 0)

    client = RemoteReward(["http://127.0.0.1:9"], retries=0, health_timeout_s=0.5)  # nothing listens: never called
    monkeypatch.setattr(client, "score_chunk", score_chunk)
    try:
        tokenizer = FrozenTokenizer(DigitsVQ(codebook_size=16, hidden=16))
        tokens, targets = torch.randint(0, 16, (10, 64)), torch.rand(10, 1, 32, 32) * 2 - 1
        _, rewards, components, metrics = decode_and_score(tokenizer, client, tokens, targets, {}, chunk_size=4)
    finally:
        client.close()
    assert rewards[4:8].isnan().all() and (rewards[[0, 1, 2, 3, 8, 9]] == 0).all()
    assert list(components) == ["l2"] and components["l2"][4:8].isnan().all()
    assert (components["l2"][[0, 1, 2, 3, 8, 9]] == 1).all()
    assert metrics["reward/remote_failed_items"] == 4.0


@pytest.mark.parametrize(("overrides", "named"), [
    (["reward=loo_fd"], r"reward \(LeaveOneOutFDReward\)"),
    (["reward=coverage"], r"reward \(CoverageReward\)"),
    (["reward=recall"], r"reward \(RecallReward\)"),
    (["reward=discriminator"], r"reward \(DiscriminatorReward\)"),
    (["reward.normalize=false"], r"reward\.components\.\w+ \(\w+Reward\)"),  # the default mix, not z-scored
])
def test_a_reward_scoring_a_call_together_is_refused_chunks(overrides, named):
    with pytest.raises(ConfigError, match=f"score_chunk_size=8 .* {named} scores the samples of a call together"):
        check_config(compose_config([*overrides, "train.score_chunk_size=8"]), inception_eval=False)
    check_config(compose_config(overrides), inception_eval=False)  # whole calls: accepted


def test_a_reward_scoring_each_sample_alone_takes_chunks():
    check_config(compose_config(["reward=l2", "train.score_chunk_size=8"]), inception_eval=False)
