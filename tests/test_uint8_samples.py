"""Sample sets and reference splits are built as uint8 a batch at a time, never as one float32 array."""

import errno
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from rlar.data.batches import random_rows
from rlar.eval.generate import generate_images, generate_uint8, generated_batches
from rlar.eval.image_arrays import SUBSET_SEED, read_images, split_uint8, stacked_uint8, to_uint8_hwc, write_npz


class CodesAsImages:
    """A stand-in tokenizer: the 12 codes of a sample as a 3 x 4 gray image; records the grad mode of each call."""

    def __init__(self):
        self.grad_enabled = []

    def decode_code(self, codes):
        self.grad_enabled.append(torch.is_grad_enabled())
        return codes.float().view(len(codes), 1, 3, 4) / 15.5 - 1


def test_stacked_batches_equal_the_whole_set_converted_at_once():
    images = torch.rand(7, 3, 5, 4, generator=torch.Generator().manual_seed(0)) * 2 - 1  # [7, 3, 5, 4]
    stacked = stacked_uint8(iter(images.split(3)), 7)  # batches of 3, 3, 1
    assert stacked.dtype == np.uint8 and stacked.shape == (7, 5, 4, 3)
    assert np.array_equal(stacked, to_uint8_hwc(images))


@pytest.mark.parametrize("count", [6, 8])
def test_a_count_other_than_the_batches_images_is_refused(count):
    with pytest.raises(ValueError, match=f"expected {count} images, got 7"):
        stacked_uint8(iter(torch.zeros(7, 1, 2, 2).split(3)), count)


def test_generated_uint8_samples_are_the_float_samples_converted(gpt):
    labels, sampling = torch.tensor([0, 1, 2, 3, 4]), {"temperature": 1.0, "cfg_scale": 1.0}
    floats = generate_images(gpt, CodesAsImages(), labels, sampling, 2, torch.Generator().manual_seed(3), "cpu")
    samples = generate_uint8(gpt, CodesAsImages(), labels, sampling, 2, torch.Generator().manual_seed(3), "cpu")
    assert np.array_equal(samples, to_uint8_hwc(floats))


def test_the_callers_grad_mode_and_the_policys_mode_hold_between_and_after_batches(gpt):
    gpt.train()
    tokenizer = CodesAsImages()
    batches = generated_batches(gpt, tokenizer, torch.tensor([0, 1, 2]), {"temperature": 1.0}, 2,
                                torch.Generator().manual_seed(0), "cpu")
    next(batches)
    assert torch.is_grad_enabled() and tokenizer.grad_enabled == [False]  # no_grad inside the generator only
    assert len(list(batches)) == 1 and gpt.training and tokenizer.grad_enabled == [False, False]
    gpt.eval()


def test_a_reference_split_is_converted_a_chunk_at_a_time():
    images = torch.rand(150, 1, 4, 4, generator=torch.Generator().manual_seed(0)) * 2 - 1  # [150, 1, 4, 4]
    asked = []

    def eval_images_of(items):
        asked.append(items)
        return images[items]

    data = SimpleNamespace(eval_labels=torch.zeros(150), eval_images_of=eval_images_of)  # no whole eval_images
    assert np.array_equal(split_uint8(data, "eval"), to_uint8_hwc(images))
    assert [(s.start, s.stop) for s in asked] == [(0, 64), (64, 128), (128, 150)]
    assert np.array_equal(split_uint8(data, "eval", 10), to_uint8_hwc(images[random_rows(150, 10, SUBSET_SEED)]))


def test_samples_npz_is_written_whole_or_not_at_all(tmp_path, monkeypatch):
    old, new = np.zeros((2, 4, 4, 3), np.uint8), np.full((3, 4, 4, 3), 7, np.uint8)
    path = write_npz(tmp_path / "samples", old)  # named as np.savez names it
    assert path == tmp_path / "samples.npz" and np.array_equal(read_images(path), old)
    savez = np.savez

    def full_disk(file, **arrays):
        file.write(b"PK half an archive")
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(np, "savez", full_disk)
    with pytest.raises(OSError):
        write_npz(path, new)
    assert np.array_equal(read_images(path), old) and sorted(p.name for p in tmp_path.iterdir()) == ["samples.npz"]
    monkeypatch.setattr(np, "savez", savez)
    assert np.array_equal(read_images(write_npz(path, new)), new)
