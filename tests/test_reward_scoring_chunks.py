"""Decoding and scoring in chunks (train.score_chunk_size) gives the rewards of one whole call."""

import torch

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


def test_the_scoring_thread_starts_on_the_gpu_of_the_tokens(monkeypatch):
    """CUDA's current device is per thread: without this, a reward on a bare ``cuda`` device (torchrun's rank k on
    cuda:k) would copy the chunks of its worker thread to cuda:0, away from its weights."""
    from rlar.reward.scoring import same_device_as

    chosen = []
    monkeypatch.setattr(torch.cuda, "set_device", chosen.append)
    same_device_as(torch.device("cuda", 3))
    same_device_as(torch.device("cpu"))
    assert chosen == [torch.device("cuda", 3)]
