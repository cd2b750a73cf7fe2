"""Data on disk decoded on access: the batch order of the in-memory implementation, and unreadable train files."""

import logging

import numpy as np
import pytest
import torch
from datasets import Dataset, DatasetDict
from PIL import Image

import rlar.data.on_access
import rlar.data.stored
from rlar.data.batches import holdout_split, random_rows
from rlar.data.hf_disk import HFDiskData
from rlar.data.image_folder import ImageFolderData
from rlar.eval.image_arrays import SUBSET_SEED, split_uint8, to_uint8_hwc
from rlar.eval.model.classifier import DigitsClassifier
from rlar.reward.classifier import LazyClassifier, classifier_features


@pytest.fixture(scope="module")
def digits(digit_pixels):
    return digit_pixels(60)


def unit(pixels: np.ndarray) -> torch.Tensor:
    """uint8 ``[N, H, W]`` -> float ``[N, 1, H, W]`` in [-1, 1]."""
    return torch.from_numpy(pixels).float()[:, None] / 127.5 - 1


def in_memory_batches(images: torch.Tensor, labels: torch.Tensor, batch_size: int, generator: torch.Generator):
    """The batches as the in-memory implementation drew them from decoded ``images [N, C, H, W]``: a permutation of
    the train split per epoch, cut into full batches."""
    while True:
        order = torch.randperm(len(labels), generator=generator)
        for i in range(0, len(labels) - batch_size + 1, batch_size):
            idx = order[i : i + batch_size]
            yield images[idx], labels[idx], idx


def write_folder(root, pixels: np.ndarray, labels: np.ndarray) -> list[int]:
    """``root/digit<k>/<i>.png``; returns the image numbers in the folder's file order (class, then name)."""
    for i, (image, label) in enumerate(zip(pixels, labels, strict=True)):
        (root / f"digit{label}").mkdir(parents=True, exist_ok=True)
        Image.fromarray(image).save(root / f"digit{label}" / f"{i:03d}.png")
    return sorted(range(len(labels)), key=lambda i: (labels[i], i))


@pytest.fixture(scope="module")
def sources(digits, tmp_path_factory):
    """Each data kind built three ways (its keyword arguments) with the train images and labels it must hold, in
    order: a held-out image folder, a held-out Dataset, a DatasetDict with a validation split and max_images."""
    pixels, labels = digits
    tmp = tmp_path_factory.mktemp("on_access")
    order = write_folder(tmp / "folder", pixels, labels)
    train_idx, _ = holdout_split(60, 0.1, 0)
    folder_rows = torch.tensor(order)[train_idx]
    pil = [Image.fromarray(p) for p in pixels]
    Dataset.from_dict({"image": pil, "label": labels.tolist()}).save_to_disk(str(tmp / "hf"))
    DatasetDict({"train": Dataset.from_dict({"image": pil[:40], "label": labels[:40].tolist()}),
                 "validation": Dataset.from_dict({"image": pil[40:], "label": labels[40:].tolist()})}
                ).save_to_disk(str(tmp / "hf_dict"))
    subset = torch.randperm(40, generator=torch.Generator().manual_seed(0))[:30].sort().values  # max_images=30
    return {"image_folder": (ImageFolderData, {"root": str(tmp / "folder")}, folder_rows),
            "hf_disk": (HFDiskData, {"path": str(tmp / "hf")}, train_idx),
            "hf_disk_validation": (HFDiskData, {"path": str(tmp / "hf_dict"), "max_images": 30}, subset)}


@pytest.mark.parametrize("num_workers", [0, 2])
@pytest.mark.parametrize("kind", ["image_folder", "hf_disk", "hf_disk_validation"])
def test_batches_come_in_the_in_memory_order(sources, digits, kind, num_workers):
    pixels, labels = digits
    cls, kwargs, rows = sources[kind]
    data = cls(**kwargs, image_size=32, channels=1, num_workers=num_workers)
    train_images, train_labels = unit(pixels)[rows], torch.from_numpy(labels)[rows]
    assert torch.equal(data.train_labels, train_labels)
    g, g_ref = torch.Generator().manual_seed(5), torch.Generator().manual_seed(5)
    stream, expected = data.batches(8, g), in_memory_batches(train_images, train_labels, 8, g_ref)
    for _ in range(3 * len(rows) // 8):  # three epochs
        images, batch_labels, idx = next(stream)
        ref_images, ref_labels, ref_idx = next(expected)
        assert images.shape == (8, 1, 32, 32) and torch.equal(images, ref_images)
        assert torch.equal(batch_labels, ref_labels) and torch.equal(idx, ref_idx)
        assert torch.equal(g.get_state(), g_ref.get_state())  # the data stream is drawn from at the same points
    assert torch.equal(data.train_images, train_images)


@pytest.fixture
def decoded(monkeypatch) -> list:
    """The sources of the images decoded from now on, in order."""
    sources, load_image = [], rlar.data.on_access.load_image
    monkeypatch.setattr(rlar.data.on_access, "load_image", lambda source, *a: sources.append(source) or
                        load_image(source, *a))
    return sources


def test_nothing_is_decoded_before_a_batch_asks(sources, decoded):
    _, kwargs, _ = sources["image_folder"]
    data = ImageFolderData(**kwargs, image_size=32, channels=1)
    assert decoded == []  # the construction decoded the eval split only
    next(data.batches(8, torch.Generator().manual_seed(0)))
    assert len(decoded) == 8


def test_a_process_decodes_only_its_share_of_each_batch(sources, decoded):
    _, kwargs, _ = sources["image_folder"]
    data = ImageFolderData(**kwargs, image_size=32, channels=1)
    whole_images, whole_labels, whole_idx = next(data.batches(8, torch.Generator().manual_seed(0)))
    decoded.clear()
    images, labels, idx = next(data.batches(8, torch.Generator().manual_seed(0), share=slice(2, 4)))
    assert len(decoded) == 2  # the second of four processes reads two images of the batch of eight
    assert torch.equal(images, whole_images[2:4])
    assert torch.equal(labels, whole_labels) and torch.equal(idx, whole_idx)  # labels and indices stay whole


def test_the_train_images_of_a_reference_are_the_only_ones_decoded(sources, decoded):
    _, kwargs, _ = sources["image_folder"]
    data = ImageFolderData(**kwargs, image_size=32, channels=1)
    whole = to_uint8_hwc(data.train_images)  # [N, 32, 32, 3]
    decoded.clear()
    train_rows = random_rows(len(whole), 5, SUBSET_SEED).numpy()  # [5]
    assert np.array_equal(split_uint8(data, "train", 5), whole[train_rows]) and len(decoded) == 5
    assert np.array_equal(split_uint8(data, "train", None), whole)
    eval_rows = random_rows(len(data.eval_labels), 3, SUBSET_SEED).numpy()  # [3]
    assert np.array_equal(split_uint8(data, "eval", 3), to_uint8_hwc(data.eval_images)[eval_rows])


def test_a_train_split_larger_than_memory_is_refused_before_decoding(sources, monkeypatch):
    decoded = []
    monkeypatch.setattr(rlar.data.on_access, "load_image", lambda source, *a: decoded.append(source))
    monkeypatch.setattr(rlar.data.stored, "physical_memory", lambda: 2**30)  # 1 GiB
    _, kwargs, _ = sources["image_folder"]
    data = ImageFolderData(**kwargs, image_size=32, channels=1)
    data.train_labels = torch.zeros(300_000, dtype=torch.long)  # 300k images of 1x32x32: 1.1 GiB as float32
    with pytest.raises(ValueError, match=r"300000 images of 1x32x32 take 1.1 GiB .*1.0 GiB .*data\.max_images=N") as e:
        _ = data.train_images
    assert "classifier" not in str(e.value)  # the classifiers read only the images their batches draw
    LazyClassifier(data, None, None)  # so a classifier reward is not refused
    assert decoded == []


def test_a_rewards_train_features_read_the_split_a_chunk_at_a_time(sources, monkeypatch):
    _, kwargs, _ = sources["image_folder"]
    data = ImageFolderData(**kwargs, image_size=32, channels=1)
    classifier = LazyClassifier(data, None, None)
    classifier.model = DigitsClassifier().eval()  # built: nothing to train
    expected = classifier_features(classifier, data.train_images, 16)  # [N, F]
    monkeypatch.setattr(ImageFolderData, "train_images", property(lambda self: pytest.fail("read whole")))
    assert torch.equal(classifier.train_features("cpu", 16), expected)


@pytest.fixture
def unreadable(tmp_path, digits):
    """``train/a`` and ``train/b`` of 5 digits each, the third of ``a`` corrupt and the last of ``b`` truncated (its
    replacement wraps around to the first of ``b``); ``val/a`` one digit."""
    pixels, _ = digits
    for k, name in enumerate(["a", "b", "val"]):
        folder = tmp_path / ("val/a" if name == "val" else f"train/{name}")
        folder.mkdir(parents=True)
        for i in range(1 if name == "val" else 5):
            Image.fromarray(pixels[5 * k + i]).save(folder / f"{i}.png")
    corrupt, truncated = tmp_path / "train/a/2.png", tmp_path / "train/b/4.png"
    corrupt.write_bytes(np.random.default_rng(0).integers(0, 256, 300, dtype=np.uint8).tobytes())
    truncated.write_bytes(truncated.read_bytes()[:100])
    return tmp_path, corrupt, truncated


@pytest.mark.parametrize("num_workers", [0, 2])
def test_an_unreadable_train_file_is_replaced_by_the_next_image_of_its_class(unreadable, digits, num_workers,
                                                                               caplog):
    root, corrupt, truncated = unreadable
    pixels, _ = digits
    data = ImageFolderData(str(root / "train"), image_size=32, channels=1, eval_root=str(root / "val"),
                           num_workers=num_workers)
    assert data.skipped == 0 and data.train_labels.tolist() == [0] * 5 + [1] * 5  # no file decoded yet
    with caplog.at_level(logging.WARNING, logger="rlar.data.decode"):
        images = data.train_images  # [10, 1, 32, 32], positions = sorted files
        assert torch.equal(data.train_images, images)  # read twice: the same replacements, warned once
    expected = unit(pixels[[0, 1, 3, 3, 4, 5, 6, 7, 8, 5]])  # a/2 -> a/3, b/4 -> b/0
    assert torch.equal(images, expected)
    assert data.skipped_paths == [str(corrupt), str(truncated)]
    warned = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warned) == 2 and str(corrupt) in warned[0] and str(truncated) in warned[1]


def test_a_class_with_no_readable_file_fails_when_read(unreadable):
    root, _, _ = unreadable
    for f in (root / "train/b").iterdir():
        f.write_bytes(b"not a png")
    data = ImageFolderData(str(root / "train"), image_size=32, channels=1, eval_root=str(root / "val"))
    with pytest.raises(ValueError, match=r"no readable image of class 1 in .*train.*: all 5 failed to decode, e\.g\. "
                                         r".*b/\d\.png: UnidentifiedImageError"):
        next(data.batches(10, torch.Generator().manual_seed(0)))  # every image of the split
