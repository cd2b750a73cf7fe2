"""Images are resized and cropped as ADM's preprocessing does (the one LlamaGen, ARPG and VA-π train and evaluate on),
checked by hand on its three steps."""

import numpy as np
import pytest
import torch
from PIL import Image

from rlar.data.decode import center_crop, load_image


def gradient(width: int, height: int) -> Image.Image:
    """An RGB image whose red channel is the column and green the row (mod 256): crops can be read off it."""
    x, y = np.meshgrid(np.arange(width), np.arange(height))
    return Image.fromarray(np.stack([x % 256, y % 256, (x + y) % 256], -1).astype(np.uint8))


def test_the_longer_side_is_rounded_not_floored():
    """1024 x 683 at 256: halved once (512 x 341), the shorter side scaled to 256 gives 384.6... -> 384 (torchvision's
    resize floors it to 383); the crop's offset (384 - 256) // 2 = 64."""
    image = gradient(1024, 683)
    halved = image.resize((512, 341), resample=Image.Resampling.BOX)
    by_hand = halved.resize((384, 256), resample=Image.Resampling.BICUBIC).crop((64, 0, 320, 256))
    assert np.array_equal(np.asarray(center_crop(image, 256)), np.asarray(by_hand))


@pytest.mark.parametrize("width,height,halvings",
                         [(2048, 1365, 1), (3000, 1600, 2), (500, 375, 0), (768, 768, 1), (767, 767, 0)])
def test_a_large_image_is_halved_with_a_box_filter_while_twice_the_size(width, height, halvings):
    image = gradient(width, height)
    by_hand = image
    for _ in range(halvings):
        by_hand = by_hand.resize((by_hand.width // 2, by_hand.height // 2), resample=Image.Resampling.BOX)
    scale = 384 / min(by_hand.size)
    by_hand = by_hand.resize((round(by_hand.width * scale), round(by_hand.height * scale)),
                             resample=Image.Resampling.BICUBIC)
    left, top = (by_hand.width - 384) // 2, (by_hand.height - 384) // 2
    by_hand = by_hand.crop((left, top, left + 384, top + 384))
    assert center_crop(image, 384).size == (384, 384)
    assert np.array_equal(np.asarray(center_crop(image, 384)), np.asarray(by_hand))


def test_a_file_is_decoded_through_it(tmp_path):
    path = tmp_path / "wide.png"
    gradient(1024, 683).save(path)
    expected = torch.from_numpy(np.array(center_crop(gradient(1024, 683), 256))).permute(2, 0, 1)  # [3, 256, 256]
    assert torch.equal(load_image(path, 256, 3), expected)
