"""File-backed data: a Hugging Face dataset saved with save_to_disk, and an image folder with unreadable files."""

import json
import logging
import math

import numpy as np
import pytest
import torch
from datasets import ClassLabel, Dataset, DatasetDict, Features
from datasets import Image as ImageFeature
from PIL import Image

from rlar.config.store import compose_config
from rlar.data import stored
from rlar.data.batches import holdout_split
from rlar.data.hf_disk import HFDiskData
from rlar.data.image_folder import ImageFolderData
from rlar.loop import train_rl_loop


@pytest.fixture(scope="module")
def digits(digit_pixels):
    return digit_pixels(300)


def unit(pixels: np.ndarray) -> torch.Tensor:
    """uint8 HW or HWC images ``[N, ...]`` -> float ``[N, C, H, W]`` in [-1, 1], as the data should give them."""
    x = torch.from_numpy(pixels).float()
    x = x[:, None] if x.dim() == 3 else x.permute(0, 3, 1, 2)
    return x / 127.5 - 1


def save_dict(path, splits: dict) -> str:
    DatasetDict({name: Dataset.from_dict(columns) for name, columns in splits.items()}).save_to_disk(str(path))
    return str(path)


def pil(pixels: np.ndarray) -> list:
    return [Image.fromarray(p) for p in pixels]


def tiny_run(tiny, tmp_path, data_overrides):
    """A seconds-long run of the loop on this data; returns its summary and output directory."""
    out = tmp_path / "run"
    cfg = compose_config([*tiny, *data_overrides, "data.image_size=32", "data.channels=1",  # the tokenizer and prior
                          "tokenizer.train.steps=10", "tokenizer.train.batch_size=32",  # train on this data: fewer
                          "policy.pretrain.steps=10", "policy.pretrain.batch_size=32"])  # steps than `tiny`'s
    return train_rl_loop(cfg, out), out


def cached_prior_state(cache_dir, data: dict):
    """The prior the loop pretrained on this data (found by the data fingerprint in the cache's spec)."""
    for spec in cache_dir.glob("gpt_prior-*.json"):
        if data.items() <= json.loads(spec.read_text())["spec"]["data"].items():
            return torch.load(spec.with_suffix(".pt"), weights_only=True)
    raise AssertionError(f"no cached prior for {data}")


def assert_trained(summary, out, cache_dir, data: dict):
    assert math.isfinite(summary["eval_reward_before"]) and math.isfinite(summary["eval_reward_after"])
    assert (out / "summary.json").is_file()
    final = torch.load(out / "checkpoints" / "last.pt", weights_only=True)
    assert final["iteration"] == 2
    prior = cached_prior_state(cache_dir, data)
    assert any(not torch.equal(prior[k], v) for k, v in final["policy"].items())  # RL moved the policy


# ---- Hugging Face datasets ----

@pytest.fixture(scope="module")
def hf_dict(digits, tmp_path_factory):
    """A DatasetDict with train (240 images) and validation (60) splits of PIL images and int labels."""
    pixels, labels = digits
    path = tmp_path_factory.mktemp("hf") / "digits"
    return save_dict(path, {"train": {"image": pil(pixels[:240]), "label": labels[:240].tolist()},
                            "validation": {"image": pil(pixels[240:]), "label": labels[240:].tolist()}})


def test_hf_dataset_round_trips_images_and_labels(hf_dict, digits):
    pixels, labels = digits
    data = HFDiskData(hf_dict, image_size=32, channels=1)
    assert data.eval_uint8.dtype == torch.uint8 and data.eval_uint8.shape == (60, 1, 32, 32)  # kept in memory
    assert torch.equal(data.train_images, unit(pixels[:240]))  # exact: the images are already 32x32 uint8
    order = torch.randperm(60, generator=torch.Generator().manual_seed(0))  # data.split_seed's fixed random order
    assert torch.equal(data.eval_images, unit(pixels[240:])[order])  # the validation split is the eval split
    assert data.train_labels.tolist() == labels[:240].tolist()
    assert data.eval_labels.tolist() == labels[240:][order.numpy()].tolist()
    assert (data.num_classes, data.channels, data.image_size, data.skipped) == (10, 1, 32, 0)
    images, batch_labels, idx = next(data.batches(16, torch.Generator().manual_seed(0)))
    assert images.shape == (16, 1, 32, 32) and torch.equal(images, data.train_images[idx])
    assert torch.equal(batch_labels, data.train_labels[idx])
    fp = data.fingerprint()
    assert (fp["eval_split"], fp["num_train"], fp["num_eval"]) == ("validation", 240, 60)
    assert HFDiskData(hf_dict, image_size=32, channels=1, max_images=50).fingerprint() != fp


def test_hf_dataset_decodes_in_dataloader_workers(hf_dict):
    main = HFDiskData(hf_dict, image_size=16, channels=3, max_images=100)
    workers = HFDiskData(hf_dict, image_size=16, channels=3, max_images=100, num_workers=2)
    assert workers.train_images.shape == (100, 3, 16, 16)
    assert torch.equal(main.train_images, workers.train_images) and torch.equal(main.train_labels, workers.train_labels)
    assert torch.equal(main.eval_images, workers.eval_images)


def test_center_crop_and_resize(tmp_path, digits):
    pixels, labels = digits
    wide = np.concatenate([np.full((40, 32, 8), 255, np.uint8), pixels[:40], np.zeros((40, 32, 8), np.uint8)], 2)
    rgb = np.stack([wide, 255 - wide, wide // 2], axis=-1)  # [40, 32, 48, 3]: a digit with bars left and right
    path = save_dict(tmp_path / "wide", {"train": {"image": pil(rgb), "label": labels[:40].tolist()}})
    data = HFDiskData(path, image_size=32, channels=3, eval_fraction=0.25)
    train_idx, eval_idx = holdout_split(40, 0.25, 0)
    crop = unit(rgb[:, :, 8:40])  # the shorter side is already 32: the center crop drops the bars
    assert torch.equal(data.train_images, crop[train_idx]) and torch.equal(data.eval_images, crop[eval_idx])
    small = HFDiskData(path, image_size=16, channels=1)  # shorter side 32 -> 16, then a 16x16 center crop
    assert small.train_images.shape == (36, 1, 16, 16)
    gray = torch.stack([torch.from_numpy(np.array(Image.fromarray(x).convert("L"))) for x in rgb])  # [40, 32, 48]
    half = torch.nn.functional.avg_pool2d(gray[:, None, :, 8:40].float(), 2)  # [40, 1, 16, 16]
    error = ((small.train_images + 1) * 127.5 - half[holdout_split(40, 0.1, 0)[0]]).abs().mean()
    assert error < 4  # the same pictures, up to the resampling filter (pixel values span 0..255)


@pytest.mark.parametrize("column", ["image_path", "file", "filepath"])
def test_path_columns_and_labels_fallback(tmp_path, digits, column, caplog):
    pixels, labels = digits
    root = tmp_path / "paths"
    files = [f"images/{i}.png" for i in range(30)]  # relative to the dataset directory
    Dataset.from_dict({column: files, "labels": labels[:30].tolist()}).save_to_disk(str(root))  # a plain Dataset
    (root / "images").mkdir()
    for name, image in zip(files[:29], pil(pixels[:29]), strict=True):  # the last file is missing
        image.save(root / name)
    with caplog.at_level(logging.WARNING, logger="rlar.data.decode"):
        data = HFDiskData(str(root), image_size=32, channels=1, eval_fraction=0.2)
    train_idx, eval_idx = holdout_split(30, 0.2, 0)  # over every row, readable or not
    assert 29 in eval_idx.tolist()  # the eval split is decoded at construction: the missing file is skipped there
    assert data.skipped_paths == [str(root / files[29])] and files[29] in caplog.text
    assert torch.equal(data.train_images, unit(pixels[:30])[train_idx])
    assert data.eval_labels.tolist() == labels[eval_idx[eval_idx != 29].numpy()].tolist()
    assert data.fingerprint()["eval_split"] == "holdout"


def test_relative_paths_not_under_the_dataset_resolve_from_the_current_directory(tmp_path, digits, monkeypatch):
    pixels, labels = digits
    monkeypatch.chdir(tmp_path)
    (tmp_path / "pngs").mkdir()
    for i, image in enumerate(pil(pixels[:10])):
        image.save(tmp_path / "pngs" / f"{i}.png")
    path = save_dict(tmp_path / "elsewhere" / "ds", {"train": {"image": [f"pngs/{i}.png" for i in range(10)],
                                                                "label": labels[:10].tolist()}})
    data = HFDiskData(path, image_size=32, channels=1, eval_fraction=0.2)
    assert data.skipped == 0 and len(data.train_labels) + len(data.eval_labels) == 10


def test_class_label_column_fixes_the_class_count(tmp_path, digits):
    pixels, _ = digits
    features = Features({"image": ImageFeature(), "label": ClassLabel(num_classes=1000)})
    path = tmp_path / "subset"
    Dataset.from_dict({"image": pil(pixels[:20]), "label": [7, 900] * 10}, features=features).save_to_disk(str(path))
    assert HFDiskData(str(path), image_size=32, channels=1).num_classes == 1000


@pytest.mark.slow
def test_train_on_a_saved_hf_dataset(tiny, cache_dir, tmp_path, hf_dict):
    summary, out = tiny_run(tiny, tmp_path, ["data=hf_disk", f"data.path={hf_dict}"])
    assert_trained(summary, out, cache_dir, {"name": "hf_disk", "path": hf_dict, "num_train": 240, "num_eval": 60})


# ---- image folders ----

@pytest.fixture(scope="module")
def folder(digits, tmp_path_factory):
    """``root/digit<k>/<i>.png`` for 120 digits, plus a corrupt and a truncated PNG and a stray text file."""
    pixels, labels = digits
    root = tmp_path_factory.mktemp("folder") / "digits"
    for i, (image, label) in enumerate(zip(pil(pixels[:120]), labels[:120], strict=True)):
        (root / f"digit{label}").mkdir(parents=True, exist_ok=True)
        image.save(root / f"digit{label}" / f"{i:03d}.png")
    corrupt = root / "digit3" / "corrupt.png"
    corrupt.write_bytes(np.random.default_rng(0).integers(0, 256, 500, dtype=np.uint8).tobytes())
    whole = root / "digit5" / "whole.png"
    Image.fromarray(np.random.default_rng(1).integers(0, 256, (64, 64), dtype=np.uint8)).save(whole)
    truncated = root / "digit5" / "truncated.png"
    truncated.write_bytes(whole.read_bytes()[:2000])
    whole.unlink()
    (root / "digit1" / "notes.txt").write_text("not an image")
    return root, corrupt, truncated


def test_image_folder_skips_unreadable_files_with_a_warning(folder, digits, caplog):
    root, corrupt, truncated = folder
    with caplog.at_level(logging.WARNING, logger="rlar.data.decode"):
        data = ImageFolderData(str(root), image_size=32, channels=1, eval_fraction=0.2)
        images = data.train_images  # decodes the whole train split: every unreadable file is met
    assert data.skipped == 2 and sorted(data.skipped_paths) == sorted([str(corrupt), str(truncated)])
    warned = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert any(str(corrupt) in m for m in warned) and any(str(truncated) in m for m in warned)
    assert data.num_classes == 10 and len(images) == len(data.train_labels)
    # every image read back is a digit of its class folder's id (sorted names digit0..digit9), unreadable ones too:
    # they are replaced by another image of their class
    pixels, labels = digits
    source = {tuple(unit(pixels[i : i + 1]).flatten().tolist()): int(labels[i]) for i in range(120)}
    for image, label in zip([*images, *data.eval_images], [*data.train_labels, *data.eval_labels], strict=True):
        assert source[tuple(image.flatten().tolist())] == int(label)


@pytest.mark.slow
def test_train_on_an_image_folder_with_a_corrupt_file(tiny, cache_dir, tmp_path, folder):
    summary, out = tiny_run(tiny, tmp_path, ["data=image_folder", f"data.root={folder[0]}"])
    # of the 122 files, 12 are held out: the truncated one among them is left out there, the corrupt one is read
    # (and replaced) in the train split
    counts = {"num_train": 110, "num_eval": 11}
    assert_trained(summary, out, cache_dir, {"name": "image_folder", "root": str(folder[0]), **counts})


def test_image_folder_eval_root(tmp_path, folder):
    root = folder[0]
    evaluation = tmp_path / "val" / "digit4"
    evaluation.mkdir(parents=True)
    for f in sorted((root / "digit4").glob("*.png"))[:3]:
        evaluation.joinpath(f.name).write_bytes(f.read_bytes())
    data = ImageFolderData(str(root), image_size=32, channels=1, eval_root=str(tmp_path / "val"))
    assert data.eval_labels.tolist() == [4, 4, 4]
    assert len(data.train_labels) == 122 and data.skipped == 0  # every file of root: the 2 unreadable ones are met
    # (and skipped) only when a batch reads them


@pytest.mark.parametrize("kind", ["hf_disk", "image_folder"])
def test_a_held_out_split_listed_class_by_class_is_evaluated_in_a_random_order(tmp_path, digits, kind):
    """A saved split or an eval_root lists its images class by class; eval.max_items takes the first items of the
    eval split, which must then hold several classes, each image with its own label."""
    pixels, labels = digits
    by_class = np.argsort(labels[100:160], kind="stable") + 100  # [60] positions, class 0 first
    if kind == "hf_disk":
        data = HFDiskData(save_dict(tmp_path / "hf", {
            "train": {"image": pil(pixels[:100]), "label": labels[:100].tolist()},
            "validation": {"image": pil(pixels[by_class]), "label": labels[by_class].tolist()}}),
            image_size=32, channels=1)
    else:
        for root, positions in ((tmp_path / "train", range(100)), (tmp_path / "val", by_class)):
            for i in positions:
                (root / f"d{labels[i]}").mkdir(parents=True, exist_ok=True)
                Image.fromarray(pixels[i]).save(root / f"d{labels[i]}" / f"{i:03d}.png")
        data = ImageFolderData(str(tmp_path / "train"), image_size=32, channels=1, eval_root=str(tmp_path / "val"))
    assert sorted(data.eval_labels.tolist()) == sorted(labels[by_class].tolist())  # the whole split
    assert len(set(data.eval_labels[:10].tolist())) >= 4  # class by class, the first 10 would be 1 or 2 classes
    for image, label in zip(data.eval_uint8, data.eval_labels, strict=True):  # each image kept with its label
        match = [i for i in by_class if np.array_equal(pixels[i], image[0].numpy())]
        assert match and all(labels[i] == label for i in match)


def test_an_unlabeled_split_is_refused_naming_the_split_and_the_fix(tmp_path, digits):
    pixels, labels = digits
    path = save_dict(tmp_path / "unlabeled", {"train": {"image": pil(pixels[:20]), "label": labels[:20].tolist()},
                                              "test": {"image": pil(pixels[20:30]), "label": [-1] * 10}})
    with pytest.raises(ValueError, match=r"split 'test' .* has unlabeled rows \(label -1.*set data.eval_split=<a "
                                         r"labeled split> or data.eval_split=holdout"):
        HFDiskData(path, image_size=32, channels=1)
    assert len(HFDiskData(path, image_size=32, channels=1, eval_split="holdout").eval_labels) == 2


def test_an_image_folder_refuses_zero_classes(folder):
    with pytest.raises(ValueError, match=r"outside \[0, data.num_classes=0\); set data.num_classes>=10"):
        ImageFolderData(str(folder[0]), image_size=32, channels=1, num_classes=0)


# ---- clear errors ----

def test_a_held_out_split_that_is_the_train_split_is_refused(tmp_path, folder, hf_dict):
    root = folder[0]
    for eval_root in (root, root / "digit4", root.parent):  # the same folder, one inside it, one around it
        with pytest.raises(ValueError, match="share images .* a folder apart, or eval_root=null"):
            ImageFolderData(str(root), image_size=32, channels=1, eval_root=str(eval_root))
    with pytest.raises(ValueError, match="data.eval_split='train' is the train split"):
        HFDiskData(hf_dict, image_size=32, channels=1, eval_split="train")


def test_labels_outside_the_classes_are_refused_before_the_eval_split_is_decoded(tmp_path, digits, monkeypatch):
    pixels, labels = digits
    path = save_dict(tmp_path / "ok", {"train": {"image": pil(pixels[:20]), "label": labels[:20].tolist()},
                                       "validation": {"image": pil(pixels[20:30]), "label": [12] * 10}})
    decoded = []
    monkeypatch.setattr(stored, "decode_all", lambda *args: decoded.append(args))
    with pytest.raises(ValueError, match=r"range over \[0, 12\], outside \[0, data.num_classes=10\)"):
        HFDiskData(path, image_size=32, channels=1, num_classes=10)
    assert not decoded


def test_errors_name_the_problem_and_the_fix(tmp_path, digits):
    pixels, labels = digits
    with pytest.raises(FileNotFoundError, match="does not exist.*save_to_disk"):
        HFDiskData(str(tmp_path / "nope"))
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match="is not a dataset written by save_to_disk"):
        HFDiskData(str(tmp_path / "empty"))
    images = {"image": pil(pixels[:10]), "label": labels[:10].tolist()}
    no_train = save_dict(tmp_path / "no_train", {"validation": images})
    with pytest.raises(ValueError, match=r"splits \['validation'\] but no 'train'; set data.split"):
        HFDiskData(no_train)
    no_image = save_dict(tmp_path / "no_image", {"train": {"pixels": [[0]] * 10, "label": [0] * 10}})
    with pytest.raises(ValueError, match=r"no column image / image_path / file / filepath; its columns are "
                                         r"\['pixels', 'label'\]: set data.image_column"):
        HFDiskData(no_image)
    no_label = save_dict(tmp_path / "no_label", {"train": {"image": images["image"]}})
    with pytest.raises(ValueError, match=r"no column label / labels; its columns are \['image'\]"):
        HFDiskData(no_label)
    gaps = save_dict(tmp_path / "gaps", {"train": {"image": images["image"], "label": [0, 2] * 5}})
    with pytest.raises(ValueError, match=r"class ids 0..K-1; found 2 distinct values \[0, 2\]"):
        HFDiskData(gaps, image_size=32, channels=1)
    with pytest.raises(ValueError, match="eval_split='val' is not a split"):
        HFDiskData(save_dict(tmp_path / "ok", {"train": images}), eval_split="val")
    broken = tmp_path / "broken" / "a"
    broken.mkdir(parents=True)
    for i in range(10):
        (broken / f"x{i}.png").write_bytes(b"not a png")
    with pytest.raises(ValueError, match=r"no readable image in the eval split .*x\d\.png: UnidentifiedImageError"):
        ImageFolderData(str(tmp_path / "broken"), image_size=32)
    with pytest.raises(ValueError, match="has no class sub-folders"):
        ImageFolderData(str(tmp_path / "broken" / "a"))
    with pytest.raises(FileNotFoundError, match="data.root=.* is not a directory"):
        ImageFolderData(str(tmp_path / "nope"))
