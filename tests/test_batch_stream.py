"""The train batch stream is a function of its seed and of how many batches were taken: a resumed run continues it."""

import torch

from rlar.data.batches import ImageData


class TenImages(ImageData):
    train_images = torch.arange(10.0)[:, None, None, None]
    train_labels = torch.arange(10)


def indices(start: int, count: int) -> list[list[int]]:
    stream = TenImages().batches(3, torch.Generator().manual_seed(0), start=start)  # 3 batches per epoch
    return [next(stream)[2].tolist() for _ in range(count)]


def test_stream_from_a_batch_is_the_tail_of_the_whole_stream():
    whole = indices(0, 8)
    assert indices(2, 6) == whole[2:]  # the last batch of the first epoch, then the next epochs
    assert indices(4, 4) == whole[4:]  # inside the second epoch
    assert whole[0] != whole[3]  # each epoch has its own order
