"""File-backed data: a resumed batch stream leaves torch's global random stream as the uninterrupted one does, the
data fingerprint (a cache key) follows the files, and an unreadable train image's caption is its replacement's."""

import os
import shutil

import numpy as np
import pytest
import torch
from datasets import Dataset, DatasetDict
from PIL import Image

from rlar.data.hf_disk import HFDiskData
from rlar.data.image_folder import ImageFolderData


@pytest.fixture(scope="module")
def digits(digit_pixels):
    return digit_pixels(24)


def unit(pixels: np.ndarray) -> torch.Tensor:
    """uint8 ``[N, H, W]`` -> float ``[N, 1, H, W]`` in [-1, 1]."""
    return torch.from_numpy(pixels).float()[:, None] / 127.5 - 1


def write_folder(root, pixels: np.ndarray, labels: list[int]) -> None:
    """``root/c<k>/<i>.png``: image ``i`` in the folder of its class ``k``."""
    for i, (image, label) in enumerate(zip(pixels, labels, strict=True)):
        (root / f"c{label}").mkdir(parents=True, exist_ok=True)
        Image.fromarray(image).save(root / f"c{label}" / f"{i:02d}.png")


def save_hf(path, pixels: np.ndarray, labels: list[int]) -> str:
    """A DatasetDict at ``path`` (replacing what is there): the first 18 images the train split, the rest
    validation."""
    shutil.rmtree(path, ignore_errors=True)
    split = {"train": slice(0, 18), "validation": slice(18, None)}
    DatasetDict({name: Dataset.from_dict({"image": [Image.fromarray(p) for p in pixels[rows]],
                                          "label": labels[rows]}) for name, rows in split.items()}
                ).save_to_disk(str(path))
    return str(path)


def build(kind: str, tmp_path, digits):
    pixels, labels = digits
    labels = [i % 3 for i in range(len(labels))]
    if kind == "image_folder":
        write_folder(tmp_path / "folder", pixels, labels)
        return ImageFolderData(str(tmp_path / "folder"), image_size=32, channels=1, eval_fraction=0.25)
    return HFDiskData(save_hf(tmp_path / "hf", pixels, labels), image_size=32, channels=1)


@pytest.mark.parametrize("kind", ["image_folder", "hf_disk"])
def test_a_resumed_stream_reads_the_global_random_stream_as_the_uninterrupted_one(kind, tmp_path, digits):
    data = build(kind, tmp_path, digits)  # 18 train images: 4 batches of 4 an epoch
    uninterrupted = data.batches(4, torch.Generator().manual_seed(5))
    next(uninterrupted), next(uninterrupted)  # batches 0 and 1: the epoch's DataLoader is built
    state = torch.get_rng_state()  # a checkpoint after batch 1
    images, labels, _ = next(uninterrupted)  # batch 2, in the same epoch
    after = torch.rand(1)  # what the run draws next (ARPG orders, dropout)
    torch.set_rng_state(state)  # the resumed run: its random state restored, its stream replayed from batch 2,
    resumed = data.batches(4, torch.Generator().manual_seed(5), start=2)  # a DataLoader built mid-epoch
    images_again, labels_again, _ = next(resumed)
    assert torch.equal(images_again, images) and torch.equal(labels_again, labels)
    assert torch.equal(torch.rand(1), after)


def test_image_folder_fingerprint_names_each_files_class_size_and_time(tmp_path, digits):
    pixels, _ = digits
    root = tmp_path / "folder"
    write_folder(root, pixels[:12], [i % 2 for i in range(12)])
    data = ImageFolderData(str(root), image_size=32, channels=1, eval_fraction=0.25)
    fingerprint = data.fingerprint()
    assert ImageFolderData(str(root), image_size=32, channels=1, eval_fraction=0.25).fingerprint() == fingerprint
    (root / "c0" / "00.png").rename(root / "c1" / "00.png")  # relabelled: the same counts, one image in c1
    moved = ImageFolderData(str(root), image_size=32, channels=1, eval_fraction=0.25).fingerprint()
    assert moved != fingerprint
    assert {k: v for k, v in moved.items() if k != "files"} == {k: v for k, v in fingerprint.items() if k != "files"}
    Image.fromarray(pixels[20]).save(root / "c1" / "00.png")  # replaced in place by another image
    replaced = ImageFolderData(str(root), image_size=32, channels=1, eval_fraction=0.25).fingerprint()
    assert replaced != moved
    path = root / "c1" / "00.png"
    size, stamp = path.stat().st_size, path.stat().st_mtime_ns
    path.write_bytes(path.read_bytes()[::-1])  # rewritten in place at the same size (the listing reads no pixels)
    os.utime(path, ns=(stamp + 10**9, stamp + 10**9))  # a second later, on file systems with coarse times too
    assert path.stat().st_size == size
    rewritten = ImageFolderData(str(root), image_size=32, channels=1, eval_fraction=0.25).fingerprint()
    assert rewritten["files"] != replaced["files"]
    path.write_bytes(path.read_bytes()[::-1])
    os.utime(path, ns=(stamp, stamp))  # the same bytes and time again: the same key
    assert ImageFolderData(str(root), image_size=32, channels=1, eval_fraction=0.25).fingerprint() == replaced
    shutil.copytree(root, tmp_path / "copy")  # the same files under another root hash the same
    copied = ImageFolderData(str(tmp_path / "copy"), image_size=32, channels=1, eval_fraction=0.25).fingerprint()
    assert copied["files"] == replaced["files"]


def test_hf_disk_fingerprint_changes_when_the_split_is_saved_with_other_content(tmp_path, digits):
    pixels, labels = digits
    path = save_hf(tmp_path / "hf", pixels, labels.tolist())
    fingerprint = HFDiskData(path, image_size=32, channels=1).fingerprint()
    assert HFDiskData(path, image_size=32, channels=1).fingerprint() == fingerprint
    save_hf(tmp_path / "hf", pixels, labels.tolist())  # saved again unchanged: the same key
    assert HFDiskData(path, image_size=32, channels=1).fingerprint() == fingerprint
    relabelled = labels.tolist()
    relabelled[0], relabelled[1] = relabelled[1], relabelled[0]  # the same counts and classes, two labels swapped
    save_hf(tmp_path / "hf", pixels, relabelled)
    changed = HFDiskData(path, image_size=32, channels=1).fingerprint()
    assert changed != fingerprint
    assert changed["saved"]["train"] != fingerprint["saved"]["train"]  # the split's own fingerprints, as saved
    assert changed["saved"]["validation"] == fingerprint["saved"]["validation"]
    single = tmp_path / "single"
    Dataset.from_dict({"image": [Image.fromarray(p) for p in pixels], "label": labels.tolist()}
                      ).save_to_disk(str(single))  # a Dataset, not a DatasetDict: its split 'train' held out from
    assert set(HFDiskData(str(single), image_size=32, channels=1).fingerprint()["saved"]) == {"train"}


@pytest.fixture
def captioned(tmp_path, digits):
    """A DatasetDict of image files and captions ``cap <i>``: train ``0..4`` of class 0 and ``5..9`` of class 1,
    ``2.png`` corrupt (read as ``3.png``, the next image of its class); validation one image."""
    pixels, _ = digits
    root = tmp_path / "captioned"
    labels = [0] * 5 + [1] * 5 + [0]
    columns = {"file": [f"{i}.png" for i in range(11)], "label": labels, "caption": [f"cap {i}" for i in range(11)]}
    DatasetDict({"train": Dataset.from_dict({k: v[:10] for k, v in columns.items()}),
                 "validation": Dataset.from_dict({k: v[10:] for k, v in columns.items()})}).save_to_disk(str(root))
    for i in range(11):
        Image.fromarray(pixels[i]).save(root / f"{i}.png")
    (root / "2.png").write_bytes(b"not a png")
    return str(root), pixels


def read_as(caption: str) -> int:
    return int(caption.split()[1])


def test_the_caption_of_a_replaced_image_in_the_whole_train_split_is_its_replacements(captioned):
    root, pixels = captioned
    data = HFDiskData(root, image_size=32, channels=1, caption_column="caption")
    images = data.train_images  # [10, 1, 32, 32]: what the prior pretrains on, with data.train_captions
    assert data.skipped == 1 and torch.equal(images[2], images[3])
    captions = list(data.train_captions)
    assert [read_as(c) for c in captions] == [0, 1, 3, 3, 4, 5, 6, 7, 8, 9]
    for image, caption in zip(images, captions, strict=True):
        assert torch.equal(image, unit(pixels[read_as(caption)][None])[0])


@pytest.mark.parametrize("num_workers", [0, 2])
def test_the_caption_of_a_replaced_image_in_a_batch_is_its_replacements(captioned, num_workers):
    root, pixels = captioned
    data = HFDiskData(root, image_size=32, channels=1, caption_column="caption", num_workers=num_workers)
    images, labels, idx = next(data.batches(10, torch.Generator().manual_seed(0)))  # every train image
    captions = data.captions_of(idx)
    assert "cap 2" not in captions and captions.count("cap 3") == 2
    for image, caption in zip(images, captions, strict=True):
        assert torch.equal(image, unit(pixels[read_as(caption)][None])[0])


def test_the_captions_key_of_a_text_prior_does_not_depend_on_what_was_read(captioned):
    """A text prior's cache key hashes each file's own caption: the same before and after a replacement was met."""
    from rlar.text.conditions import captions_fingerprint

    data = HFDiskData(captioned[0], image_size=32, channels=1, caption_column="caption")
    before = captions_fingerprint(data)
    assert data.train_images.shape[0] == 10  # meets the corrupt file: its caption now reads its replacement's
    assert data.train_captions[2] == "cap 3" and captions_fingerprint(data) == before
