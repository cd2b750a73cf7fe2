"""Caption data: captions parallel to the images of every data option (the digits' attribute captions, an
hf_disk text column, image_folder sidecars), a prompt-only data set, and the loop's path for data without images."""

import numpy as np
import pytest
import torch
from datasets import Dataset, DatasetDict
from omegaconf import OmegaConf
from PIL import Image

from rlar.data.batches import holdout_split
from rlar.data.captions import attribute_captions
from rlar.data.digits import DigitsData
from rlar.data.hf_disk import CaptionColumn, HFDiskData
from rlar.data.image_folder import ImageFolderData
from rlar.data.prompts import PromptData
from rlar.loop import reward_meta
from rlar.policy.conditioning import Condition
from rlar.rollout.collect import collect_rollout
from rlar.rollout.types import Rollout


@pytest.fixture(scope="module")
def digits(digit_pixels):
    return digit_pixels(60)


def caption_of(i: int, label: int) -> str:
    return f"digit {label}, image {i}"


def unit(pixels: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(pixels).float()[:, None] / 127.5 - 1


def test_digits_attribute_captions_are_parallel_to_the_images():
    data = DigitsData(captions="attributes")
    assert data.train_captions == attribute_captions(data.train_images, data.train_labels)
    assert data.eval_captions == attribute_captions(data.eval_images, data.eval_labels)
    images, labels, idx = next(data.batches(16, torch.Generator().manual_seed(0)))
    assert data.captions_of(idx) == attribute_captions(images, labels)
    plain = DigitsData()
    assert plain.train_captions is None and plain.eval_captions is None and plain.captions_of(idx) is None
    assert plain.fingerprint() == data.fingerprint()  # the images are the same: what is cached on them is shared
    with pytest.raises(ValueError, match="data.captions='words' is not available; choose one of"):
        DigitsData(captions="words")


def test_hf_disk_reads_a_caption_column_on_access(tmp_path, digits):
    pixels, labels = digits
    captions = [caption_of(i, k) for i, k in enumerate(labels.tolist())]
    captions[3] = None  # a missing cell: the empty caption
    splits = {"train": (0, 48), "validation": (48, 60)}
    DatasetDict({name: Dataset.from_dict({"image": [Image.fromarray(p) for p in pixels[lo:hi]],
                                          "label": labels[lo:hi].tolist(), "text": captions[lo:hi]})
                 for name, (lo, hi) in splits.items()}).save_to_disk(str(tmp_path / "ds"))
    data = HFDiskData(str(tmp_path / "ds"), image_size=32, channels=1, caption_column="text")
    assert isinstance(data.train_captions.own, CaptionColumn)  # read from the table when asked, not held as a list
    order = torch.randperm(12, generator=torch.Generator().manual_seed(0)).tolist()  # data.split_seed's order
    assert data.eval_captions == [captions[48 + i] for i in order]
    images, batch_labels, idx = next(data.batches(8, torch.Generator().manual_seed(1)))
    assert data.captions_of(idx) == [captions[i] or "" for i in idx.tolist()]
    assert torch.equal(images, unit(pixels[idx.numpy()]))
    assert HFDiskData(str(tmp_path / "ds"), image_size=32, channels=1).train_captions is None
    with pytest.raises(ValueError, match=r"no column words; its columns are \['image', 'label', 'text'\]: set "
                                         "data.caption_column"):
        HFDiskData(str(tmp_path / "ds"), image_size=32, channels=1, caption_column="words")
    with pytest.raises(ValueError, match="caption column 'label' of .* holds .*captions must be a column of strings"):
        HFDiskData(str(tmp_path / "ds"), image_size=32, channels=1, caption_column="label")


def test_hf_disk_held_out_captions_leave_out_the_unreadable_images(tmp_path, digits):
    pixels, labels = digits
    root = tmp_path / "paths"
    files = [f"{i}.png" for i in range(30)]
    captions = [caption_of(i, k) for i, k in enumerate(labels[:30].tolist())]
    Dataset.from_dict({"file": files, "label": labels[:30].tolist(), "caption": captions}).save_to_disk(str(root))
    for name, p in zip(files[:29], pixels[:29], strict=True):  # the last file is missing
        Image.fromarray(p).save(root / name)
    data = HFDiskData(str(root), image_size=32, channels=1, eval_fraction=0.2, caption_column="caption")
    train_idx, eval_idx = holdout_split(30, 0.2, 0)
    assert 29 in eval_idx.tolist() and data.skipped == 1
    kept = [i for i in eval_idx.tolist() if i != 29]
    assert data.eval_captions == [captions[i] for i in kept] and data.eval_labels.tolist() == labels[kept].tolist()
    assert data.captions_of(torch.arange(len(train_idx))) == [captions[i] for i in train_idx.tolist()]


def write_folder(root, pixels, labels, sidecars: bool = True):
    for i, (p, k) in enumerate(zip(pixels, labels.tolist(), strict=True)):
        (root / f"digit{k}").mkdir(parents=True, exist_ok=True)
        Image.fromarray(p).save(root / f"digit{k}" / f"{i:03d}.png")
        if sidecars:
            (root / f"digit{k}" / f"{i:03d}.txt").write_text(f"  {caption_of(i, k)}\n", encoding="utf-8")


def test_image_folder_reads_sidecar_captions(tmp_path, digits):
    pixels, labels = digits
    write_folder(tmp_path / "root", pixels[:40], labels[:40])
    data = ImageFolderData(str(tmp_path / "root"), image_size=32, channels=1, eval_fraction=0.25, captions="sidecar")
    # each caption names its own image: the image of a caption is pixels[i] of the i it names
    images, batch_labels, idx = next(data.batches(10, torch.Generator().manual_seed(0)))
    for image, label, caption in zip(images, batch_labels.tolist(), data.captions_of(idx), strict=True):
        i = int(caption.rsplit(" ", 1)[1])
        assert caption == caption_of(i, label) and torch.equal(image, unit(pixels[i : i + 1])[0])
    for image, caption in zip(data.eval_images, data.eval_captions, strict=True):
        i = int(caption.rsplit(" ", 1)[1])
        assert torch.equal(image, unit(pixels[i : i + 1])[0])
    assert len(data.eval_captions) == 10 and len(data.train_captions) == 30


def test_image_folder_without_a_sidecar_names_it(tmp_path, digits):
    pixels, labels = digits
    write_folder(tmp_path / "root", pixels[:12], labels[:12])
    missing = sorted((tmp_path / "root").rglob("*.txt"))[4]
    missing.unlink()
    with pytest.raises(FileNotFoundError, match=f"1 of the 12 images .* no caption file beside them, e.g. "
                                                f"'{missing}'.*or set data.captions=null"):
        ImageFolderData(str(tmp_path / "root"), image_size=32, channels=1, captions="sidecar")
    with pytest.raises(ValueError, match="data.captions='txt' is not available"):
        ImageFolderData(str(tmp_path / "root"), image_size=32, channels=1, captions="txt")
    assert ImageFolderData(str(tmp_path / "root"), image_size=32, channels=1).train_captions is None


def test_prompt_data_has_prompts_and_no_images(tmp_path):
    prompts = [f"a thick {w} leaning right" for w in ("zero", "one", "two", "three", "four")] * 4
    (tmp_path / "p.txt").write_text("\n".join(prompts[:10]) + "\n\n  \n" + "\n".join(prompts[10:]) + "\n")
    data = PromptData(str(tmp_path / "p.txt"), eval_fraction=0.25)
    train_idx, eval_idx = holdout_split(20, 0.25, 0)
    assert data.train_captions == [prompts[i] for i in train_idx.tolist()]
    assert data.eval_captions == [prompts[i] for i in eval_idx.tolist()]
    assert data.train_images is None and data.eval_images is None
    assert data.train_labels.tolist() == [-1] * 15 and data.eval_labels.tolist() == [-1] * 5
    images, labels, idx = next(data.batches(4, torch.Generator().manual_seed(0)))
    assert images is None and labels.tolist() == [-1] * 4
    assert data.captions_of(idx) == [data.train_captions[i] for i in idx.tolist()]
    (tmp_path / "eval.txt").write_text("an eight\na nine\n")
    apart = PromptData(str(tmp_path / "p.txt"), eval_path=str(tmp_path / "eval.txt"), max_prompts=6)
    assert apart.eval_captions == ["an eight", "a nine"] and len(apart.train_captions) == 6
    assert set(apart.train_captions) <= set(prompts)
    with pytest.raises(ValueError, match="data.max_prompts must be >= 1 or null"):  # named data.max_images before
        PromptData(str(tmp_path / "p.txt"), max_prompts=0)


def test_prompt_data_errors_name_the_fix(tmp_path):
    with pytest.raises(FileNotFoundError, match="data.path='.*nope.txt' is not a file; give a UTF-8 text file"):
        PromptData(str(tmp_path / "nope.txt"))
    (tmp_path / "blank.txt").write_text("\n  \n")
    with pytest.raises(ValueError, match="holds no prompt"):
        PromptData(str(tmp_path / "blank.txt"))
    (tmp_path / "two.txt").write_text("a one\na two\n")
    with pytest.raises(ValueError, match="of the 2 prompts .* leaves an empty split; give more prompts, "
                                         "data.eval_path"):
        PromptData(str(tmp_path / "two.txt"))


def test_prompts_reach_the_reward_repeated_for_each_generation():
    rollout = Rollout(torch.zeros(6, 4, dtype=torch.long), torch.zeros(6, 4, dtype=torch.long), torch.zeros(6, 4),
                      torch.tensor([1, 1, 1, 2, 2, 2]), torch.ones(6, 4, dtype=torch.bool))
    meta = reward_meta(rollout, ["a one", "a two"], 3)
    assert meta["prompts"] == ["a one"] * 3 + ["a two"] * 3 and torch.equal(meta["labels"], rollout.labels)
    assert "prompts" not in reward_meta(rollout, None, 3)


@pytest.mark.parametrize("items", [Condition.of_text(torch.randn(2, 3, 4), labels=torch.tensor([1, 2])),
                                   Condition(torch.tensor([1, 2]))])  # a caption or a class label dropped
def test_a_sample_drawn_from_the_null_condition_reaches_the_reward_without_a_prompt(items):
    """Condition dropout (``rollout.label_dropout``): a row that read the null caption, or the null class, saw no
    prompt, so the reward gets None for it (absent), as its label is -1."""
    rows = items.repeat_interleave(3).dropped(torch.tensor([False, True, False, False, False, True]))  # [6]
    rollout = Rollout(torch.zeros(6, 4, dtype=torch.long), torch.zeros(6, 4, dtype=torch.long), torch.zeros(6, 4),
                      rows, torch.ones(6, 4, dtype=torch.bool))
    meta = reward_meta(rollout, ["a one", "a two"], 3, items)
    assert meta["prompts"] == ["a one", None, "a one", "a two", "a two", None]
    assert meta["labels"].tolist() == [1, -1, 1, 2, 2, -1]


def test_prompt_only_items_of_the_null_class_keep_their_prompts():
    """``data=prompts`` with a class-conditional policy: every item asks for the null class, none was dropped."""
    items = Condition(torch.tensor([-1, -1]))
    rollout = Rollout(torch.zeros(4, 4, dtype=torch.long), torch.zeros(4, 4, dtype=torch.long), torch.zeros(4, 4),
                      items.repeat_interleave(2), torch.ones(4, 4, dtype=torch.bool))
    assert reward_meta(rollout, ["a one", "a two"], 2, items)["prompts"] == ["a one", "a one", "a two", "a two"]


def test_a_rollout_without_images_samples_from_the_conditions_alone(gpt):
    cfg = OmegaConf.create({"mode": "autoregressive", "temperature": 1.0, "top_k": None, "top_p": None,
                            "cfg_scale": 1.0, "cfg_interval": None, "prefix_len": 0, "token_noise_prob": 0.0,
                            "label_dropout": 0.0, "micro_batch_size": None})
    labels = torch.tensor([-1, 2])
    rollout = collect_rollout(gpt, None, labels, 3, cfg, torch.Generator().manual_seed(0))
    assert rollout.tokens.shape == (6, gpt.block_size) and rollout.mask.all()
    assert rollout.targets is None and rollout.target_context is None
    assert rollout.labels.tolist() == [-1, -1, -1, 2, 2, 2]
    # the same draws as a rollout given images: in autoregressive mode nothing of them is read
    codes = torch.randint(gpt.vocab_size, (2, gpt.block_size))
    with_images = collect_rollout(gpt, codes, labels, 3, cfg, torch.Generator().manual_seed(0))
    assert torch.equal(with_images.tokens, rollout.tokens) and torch.equal(with_images.logprobs, rollout.logprobs)
    with pytest.raises(ValueError, match="rollout.mode='teacher_forced' reads the input images' codes"):
        collect_rollout(gpt, None, labels, 3, OmegaConf.merge(cfg, {"mode": "teacher_forced"}),
                        torch.Generator().manual_seed(0))


@pytest.mark.slow
def test_the_digits_text_task_and_a_prompt_set_train_end_to_end(tiny, cache_dir, tmp_path, tb_scalars):
    """RL on the digits' attribute captions with reward=compositional, then on a prompt file alone, from the
    tokenizer and prior the first run trained."""
    from rlar.config.store import compose_config
    from rlar.loop import train_rl_loop

    reward = ["reward=compositional", "reward.classifier.train.steps=20"]
    out = tmp_path / "captions"
    summary = train_rl_loop(compose_config([*tiny, "data.captions=attributes", *reward]), out)
    for entry in summary["history"]:  # the prior's evaluation and the last one
        assert {"eval/attr/class_acc", "eval/attr/thickness_acc", "eval/attr/slant_acc", "eval/attr/all_acc",
                "eval/fd"} <= set(entry)
        assert 0 <= entry["eval/attr/all_acc"] <= min(entry["eval/attr/thickness_acc"], entry["eval/attr/slant_acc"])
        assert entry["eval/reward"] == pytest.approx(sum(entry[f"eval/reward/{c}_ok"] for c in
                                                         ("class", "thickness", "slant")) / 3)
    assert "eval_attr_all_acc_before" in summary and "eval_attr_all_acc_after" in summary
    assert len(tb_scalars(out, "reward/all_ok")) == 2  # the components, logged every iteration

    prompts = tmp_path / "prompts.txt"
    prompts.write_text("".join(f"a thick {d} leaning right\n" for d in ("zero", "one", "seven", "eight") * 5))
    tokenizer, prior = (next(cache_dir.glob(f"{name}-*.pt")) for name in ("digits_vq", "gpt_prior"))
    out = tmp_path / "prompts"
    summary = train_rl_loop(compose_config([
        *tiny, "data=prompts", f"data.path={prompts}", *reward, "reward.data={_target_:rlar.data.digits.DigitsData}",
        f"tokenizer.checkpoint={tokenizer}", f"policy.checkpoint={prior}", "eval.classifier=false",
        "algorithm.ntp_weight=0"]), out)  # no images: no ground-truth codes for GRPO's next-token term
    last = summary["history"][-1]
    assert {"eval/attr/thickness_acc", "eval/attr/slant_acc"} <= set(last) and "eval/fd" not in last
    assert len(tb_scalars(out, "reward/thickness_ok")) == 2 and summary["iterations"] == 2
