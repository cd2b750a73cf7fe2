"""The CLIP reward on a tiny offline model: the cosine of the model's own features, its preprocessing, prompts from
class names or meta, absent items in a mix, its config, and the errors that name the fix."""

import json
import string
import sys

import pytest
import torch
from hydra.utils import instantiate

from rlar.config.store import compose_config
from rlar.reward.clip import CLIPReward, clip_pixels, item_prompts
from rlar.reward.mixture import WeightedReward
from rlar.reward.quality import SharpnessReward, to_unit


def random_images(*shape, seed=0):
    return torch.rand(*shape, generator=torch.Generator().manual_seed(seed)) * 2 - 1


CHARS = string.ascii_lowercase + string.digits
DIGITS = ["zero", "one", "two", "three"]


@pytest.fixture(scope="module")
def tiny_clip(tmp_path_factory):
    """A randomly initialised CLIP (hidden 32, 2 layers, 32 px, patch 8) with a character-level tokenizer."""
    transformers = pytest.importorskip("transformers")
    words = tmp_path_factory.mktemp("vocab")
    tokens = ["<|startoftext|>", "<|endoftext|>", *CHARS, *(c + "</w>" for c in CHARS)]
    (words / "vocab.json").write_text(json.dumps({t: i for i, t in enumerate(tokens)}))
    (words / "merges.txt").write_text("#version: 0.2\n")  # no merges: one token per character
    tokenizer = transformers.CLIPTokenizer.from_pretrained(words)
    small = {"hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 2, "num_attention_heads": 2}
    config = transformers.CLIPConfig(
        text_config={**small, "vocab_size": len(tokens), "max_position_embeddings": 40, "bos_token_id": 0,
                     "eos_token_id": 1, "pad_token_id": 1},
        vision_config={**small, "image_size": 32, "patch_size": 8}, projection_dim=16)
    torch.manual_seed(0)
    model = transformers.CLIPModel(config).eval()
    images = transformers.CLIPImageProcessor(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32})
    path = tmp_path_factory.mktemp("clip")
    model.save_pretrained(path)
    transformers.CLIPProcessor(image_processor=images, tokenizer=tokenizer).save_pretrained(path)
    return path, model, tokenizer, images


def by_hand(model, tokenizer, images, prompts):
    """Cosine similarity of the model's own image and text features for 32 px images in [-1, 1]: ``[N]``."""
    mean = torch.tensor([0.48145466, 0.4578275, 0.40821073]).view(1, 3, 1, 1)
    std = torch.tensor([0.26862954, 0.26130258, 0.27577711]).view(1, 3, 1, 1)
    pixels = ((images.expand(-1, 3, -1, -1) + 1) / 2 - mean) / std
    with torch.no_grad():
        image = model.get_image_features(pixel_values=pixels)
        text = model.get_text_features(**tokenizer(prompts, padding=True, return_tensors="pt"))
    image, text = (f if torch.is_tensor(f) else f.pooler_output for f in (image, text))
    return torch.nn.functional.cosine_similarity(image, text, dim=-1)


def test_clip_equals_the_cosine_of_the_models_own_features(tiny_clip):
    path, model, tokenizer, _ = tiny_clip
    reward = CLIPReward(str(path), class_names=DIGITS, template="a photo of the digit {}", batch_size=2)
    images, labels = random_images(5, 1, 32, 32), torch.tensor([3, 0, 3, 1, 2])
    score, components = reward(images, None, {"labels": labels})
    expected = by_hand(model, tokenizer, images, [f"a photo of the digit {DIGITS[y]}" for y in labels])
    assert score.shape == (5,) and score.dtype == torch.float32 and not score.requires_grad
    assert torch.allclose(score, expected, atol=1e-5)
    assert components["clip"] is score
    assert not reward.model.training and not any(p.requires_grad for p in reward.model.parameters())
    scaled = CLIPReward(str(path), class_names=DIGITS, template="a photo of the digit {}", scale=100.0)
    assert torch.allclose(scaled(images, None, {"labels": labels})[0], 100 * expected, atol=1e-3)
    prompts = ["three", "a 7", "zero", "one", "two"]
    assert torch.allclose(reward(images, None, {"prompts": prompts})[0], by_hand(model, tokenizer, images, prompts),
                          atol=1e-5)


def test_clip_preprocessing_matches_the_processor(tiny_clip):
    *_, processor = tiny_clip
    smooth = torch.nn.functional.interpolate(to_unit(random_images(2, 3, 4, 4)), size=(20, 20), mode="bilinear")
    images = (smooth * 255).round().to(torch.uint8)  # [2, 3, 20, 20], resized up to 32 px
    expected = processor(images=list(images), return_tensors="pt")["pixel_values"]
    pixels = clip_pixels(images / 127.5 - 1, processor.to_dict())
    assert pixels.shape == expected.shape == (2, 3, 32, 32)
    # the processor resizes uint8 images one axis at a time, rounding each pass: ~2 gray levels / std apart
    assert torch.allclose(pixels, expected, atol=0.03)


def test_prompts_from_meta_or_class_names_and_labels():
    labels = torch.tensor([2, 0, 4, -1])  # 4: the null class (4 classes), -1: no label
    assert item_prompts({"labels": labels}, 4, DIGITS, "the digit {}") == ["the digit two", "the digit zero",
                                                                          None, None]
    assert item_prompts({"labels": labels, "prompts": ["a cat", "", None, "a dog"]}, 4, DIGITS, "{}") == [
        "a cat", None, None, "a dog"]  # prompts win over class names
    assert item_prompts({"labels": labels}, 4, None, "{}") == [None] * 4
    assert item_prompts(None, 2, DIGITS, "{}") == [None] * 2
    with pytest.raises(ValueError, match="one per image"):
        item_prompts({"labels": labels}, 8, DIGITS, "{}")


def test_an_item_without_prompt_is_absent_and_the_mix_falls_back(tiny_clip):
    path, model, tokenizer, _ = tiny_clip
    clip = CLIPReward(str(path), class_names=DIGITS)
    images, labels = random_images(3, 1, 32, 32), torch.tensor([1, 4, 2])  # 4: no class name
    score = clip(images, None, {"labels": labels})[0]
    assert score.isnan().tolist() == [False, True, False]  # absent, not a constant
    mix = WeightedReward({"clip": clip, "sharpness": SharpnessReward()}, {"clip": 2.0, "sharpness": 0.5})
    total, components = mix(images, None, {"labels": labels})
    sharp = SharpnessReward()(images, None)[0]
    assert torch.allclose(total[[0, 2]], 2.0 * score[[0, 2]] + 0.5 * sharp[[0, 2]])
    assert total[1] == pytest.approx(0.5 * sharp[1].item())  # the other components only
    assert components["clip"][1].isnan()
    normalized = WeightedReward({"clip": clip, "sharpness": SharpnessReward()}, {"clip": 2.0, "sharpness": 0.5},
                                normalize=True)  # clip z-scored over its two present items: -1/sqrt(2), +1/sqrt(2)
    sharp_z = (sharp - sharp.mean()) / sharp.std()
    assert normalized(images, None, {"labels": labels})[0][1] == pytest.approx(0.5 * sharp_z[1].item(), abs=1e-5)
    only_clip = WeightedReward({"clip": clip, "sharpness": SharpnessReward()}, {"clip": 1.0, "sharpness": 0.0})
    assert only_clip(images, None, {"labels": labels})[0].isnan().tolist() == [False, True, False]


def test_no_prompt_at_all_warns_and_is_absent(tiny_clip):
    clip = CLIPReward(str(tiny_clip[0]))  # no class names
    with pytest.warns(UserWarning, match="reward.class_names"):
        score = clip(random_images(2, 1, 32, 32), None, {"labels": torch.tensor([0, 1])})[0]
    assert score.isnan().all()


def test_clip_config_composes_with_a_model_path_and_a_class_names_file(tiny_clip, tmp_path):
    names = tmp_path / "classes.txt"
    names.write_text("zero\none\n\n")
    cfg = compose_config(["reward=clip", f"reward.model_path={tiny_clip[0]}", f"reward.class_names_file={names}",
                          "reward.template='digit {}'"]).reward
    reward = instantiate(cfg)
    assert reward.class_names == ["zero", "one"]
    images = random_images(2, 1, 32, 32)
    expected = by_hand(tiny_clip[1], tiny_clip[2], images, ["digit one", "digit zero"])
    assert torch.allclose(reward(images, None, {"labels": torch.tensor([1, 0])})[0], expected, atol=1e-5)


def test_clip_missing_model_or_transformers_names_the_fix(tmp_path, monkeypatch):
    with pytest.raises(FileNotFoundError) as err:
        CLIPReward(str(tmp_path / "nope"))
    for part in (str(tmp_path / "nope"), "huggingface-cli download openai/clip-vit-base-patch32 --local-dir"):
        assert part in str(err.value)
    with pytest.raises(ValueError, match=r"'\{\}'"):
        CLIPReward(str(tmp_path), template="a digit")
    (tmp_path / "config.json").write_text("{}")
    monkeypatch.setitem(sys.modules, "transformers", None)  # as if the extra were not installed
    with pytest.raises(ImportError, match=r"pip install -e '\.\[clip\]'"):
        CLIPReward(str(tmp_path))
