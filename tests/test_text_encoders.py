"""Text encoders on tiny offline models: T5 and CLIP features are the model's own hidden states of each caption,
left-padded; each caption is encoded once (memory, then disk keyed by caption and model); the embedded encoder
tokenizes by its config's vocabulary, is trainable and buildable from the config alone; the errors name the fix."""

import hashlib
import json
import logging

import pytest
import torch
from hydra.utils import instantiate

from rlar.config.store import compose_config
from rlar.config.validate import check_config
from rlar.text.embedded import EmbeddedTextEncoder
from rlar.text.feature_cache import FeatureCache
from rlar.text.hf_encoders import CLIPTextEncoder, T5TextEncoder

CAPTIONS = ["a thick seven", "one", "the digit two leaning left", "one"]


def alone(model, path, caption):
    """The model's last hidden states of ``caption`` encoded on its own (no padding): ``[l, E]``."""
    import transformers

    ids = transformers.AutoTokenizer.from_pretrained(path)(caption, return_tensors="pt")["input_ids"]
    with torch.no_grad():
        return model(input_ids=ids).last_hidden_state[0]


@pytest.mark.parametrize("which", ["t5", "clip"])
def test_features_are_the_models_hidden_states_of_each_caption_left_padded(which, tiny_t5, tiny_clip_text):
    path, model = tiny_t5 if which == "t5" else tiny_clip_text
    encoder = (T5TextEncoder if which == "t5" else CLIPTextEncoder)(str(path), max_length=10)
    features, mask = encoder.encode(CAPTIONS)
    assert features.shape == (4, 10, 16) and features.dtype == torch.float32 and encoder.dim == 16
    for i, caption in enumerate(CAPTIONS):
        own = alone(model, path, caption)  # [l, 16]
        assert mask[i].tolist() == [False] * (10 - len(own)) + [True] * len(own)
        assert torch.allclose(features[i, mask[i]], own, atol=1e-5)
        assert (features[i, ~mask[i]] == 0).all()



@pytest.mark.parametrize("which", ["t5", "clip"])
def test_features_are_computed_in_the_encoders_dtype_under_a_callers_autocast(which, tiny_t5, tiny_clip_text):
    path, _ = tiny_t5 if which == "t5" else tiny_clip_text
    encoder = (T5TextEncoder if which == "t5" else CLIPTextEncoder)(str(path), max_length=10)  # float32
    exact = encoder.features(CAPTIONS)
    with torch.autocast("cpu", dtype=torch.bfloat16):  # a bf16 policy's context: the cache keys them as float32
        under = encoder.features(CAPTIONS)
    assert all(f.dtype == torch.float32 and torch.equal(f, g) for f, g in zip(under, exact, strict=True))


def test_features_a_disk_cache_kept_before_they_were_computed_outside_autocast_are_not_read(tiny_t5, tmp_path):
    path, _ = tiny_t5
    encoder = T5TextEncoder(str(path), max_length=10, feature_cache=str(tmp_path))
    older = FeatureCache(encoder.key, str(tmp_path), 4)  # the key the cache had before
    older.put("one", torch.full((2, 16), 7.0))  # what a bf16 run may have kept there
    features, mask = encoder.encode(["one"])
    assert torch.equal(features[0, mask[0]], encoder.features(["one"])[0]) and not (features == 7.0).any()


def test_long_captions_are_truncated_at_max_length(tiny_t5):
    path, _ = tiny_t5
    features, mask = T5TextEncoder(str(path), max_length=4).encode(["the digit two leaning left", "one"])
    assert mask.tolist() == [[True] * 4, [False, False, True, True]]  # "one </s>": two tokens, left-padded


def test_each_caption_is_encoded_once_in_memory_and_on_disk(tiny_t5, tmp_path, monkeypatch):
    path, _ = tiny_t5
    encoder = T5TextEncoder(str(path), max_length=10, feature_cache=str(tmp_path))
    calls = []
    encode_batch = encoder.features
    monkeypatch.setattr(encoder, "features", lambda captions: calls.append(list(captions)) or encode_batch(captions))
    first = encoder.encode(CAPTIONS)
    assert calls == [["a thick seven", "one", "the digit two leaning left"]]  # "one" twice, encoded once
    assert torch.equal(encoder.encode(CAPTIONS[::-1])[0], first[0].flip(0))
    assert len(calls) == 1
    files = sorted(p.name for p in tmp_path.glob("*.safetensors"))
    model_key = json.dumps({**encoder.spec(), "autocast": "off"}, sort_keys=True)  # features made outside autocast
    expected = sorted(hashlib.sha1(json.dumps([model_key, c]).encode()).hexdigest() + ".safetensors"
                      for c in set(CAPTIONS))
    assert files == expected
    fresh = T5TextEncoder(str(path), max_length=10, feature_cache=str(tmp_path))
    monkeypatch.setattr(fresh, "features", None)  # must read the disk, not the model
    assert torch.equal(fresh.encode(CAPTIONS)[0], first[0])
    other = T5TextEncoder(str(path), max_length=8, feature_cache=str(tmp_path))  # another key: encoded again
    assert other.spec() != encoder.spec() and other.encode(["one"])[1].sum() == 2
    assert len(list(tmp_path.glob("*.safetensors"))) == 4


def test_lowercase_encodes_a_caption_as_its_lower_case(tiny_t5):
    captions = ["A thick seven", "a thick seven"]
    cased, _ = T5TextEncoder(str(tiny_t5[0]), max_length=8).encode(captions)
    lowered, _ = T5TextEncoder(str(tiny_t5[0]), max_length=8, lowercase=True).encode(captions)
    assert not torch.equal(cased[0], cased[1])  # the word-level vocabulary tells "A" from "a"
    assert torch.equal(lowered[0], lowered[1]) and torch.equal(lowered[1], cased[1])


def test_memory_keeps_the_most_recent_captions(tiny_t5):
    encoder = T5TextEncoder(str(tiny_t5[0]), max_length=10, memory_cache_size=2)
    encoder.encode(["one", "two", "three"])
    assert list(encoder.cache.memory) == ["two", "three"]


def test_hf_encoder_errors_name_the_fix(tiny_clip_text, tmp_path):
    with pytest.raises(FileNotFoundError, match="never downloaded at run time.*download google/flan-t5-xl"):
        T5TextEncoder(str(tmp_path / "nope"), max_length=8)
    with pytest.raises(FileNotFoundError, match="no CLIPTextModel there.*download openai/clip-vit-large-patch14"):
        CLIPTextEncoder(str(tmp_path / "nope"), max_length=8)
    with pytest.raises(ValueError, match=r"max_length=20 is more than the 12 positions"):
        CLIPTextEncoder(str(tiny_clip_text[0]), max_length=20)
    with pytest.raises(ValueError, match="text_encoder.dtype='fp8'"):
        CLIPTextEncoder(str(tiny_clip_text[0]), max_length=8, dtype="fp8")


def test_embedded_tokenizer_by_hand(caplog):
    encoder = EmbeddedTextEncoder(vocabulary=("a", "thick", "seven"), max_length=6, width=8, n_layer=1, n_head=2)
    assert encoder.words == ["<pad>", "<unk>", "<cls>", "a", "thick", "seven"]
    with caplog.at_level(logging.WARNING):
        ids, mask = encoder.tokenize(["A thick SEVEN!", "a purple seven", "a a a a a a a"])
    assert ids.tolist() == [[0, 0, 2, 3, 4, 5], [0, 0, 2, 3, 1, 5], [2, 3, 3, 3, 3, 3]]
    assert mask.tolist() == [[False, False, True, True, True, True]] * 2 + [[True] * 6]
    assert "purple" in caplog.text


def test_embedded_features_are_zero_at_padding_batch_independent_and_trainable():
    torch.manual_seed(0)
    encoder = EmbeddedTextEncoder(max_length=8, width=16, n_layer=2, n_head=4).eval()
    features, mask = encoder.encode(["a thick seven", "the digit two leaning left"])
    alone, _ = encoder.encode(["a thick seven"])
    assert features[0, ~mask[0]].abs().max() == 0
    assert torch.allclose(features[0], alone[0], atol=1e-5)  # padding and batch do not change a caption's features
    assert not torch.allclose(features[0, -1], encoder.encode(["a thin seven"])[0][0, -1])
    features.sum().backward()
    assert encoder.trainable and encoder.embed.weight.grad.abs().sum() > 0


def test_every_encoder_option_composes_passes_checks_and_embedded_builds_from_config_alone(tiny_t5, tiny_clip_text):
    assert compose_config([]).text_encoder is None  # the class-conditional default
    cfg = compose_config(["text_encoder=embedded"])
    check_config(cfg)
    encoder = instantiate(cfg.text_encoder)
    assert isinstance(encoder, EmbeddedTextEncoder) and (encoder.dim, encoder.max_length) == (64, 16)
    assert "seven" in encoder.words and "leaning" in encoder.words
    for name, target, path in [("t5", "T5TextEncoder", tiny_t5[0]), ("clip", "CLIPTextEncoder", tiny_clip_text[0])]:
        cfg = compose_config([f"text_encoder={name}", f"text_encoder.model_path={path}", "text_encoder.max_length=12"])
        check_config(cfg)
        assert cfg.text_encoder._target_.endswith(target) and cfg.text_encoder.feature_cache is None
        assert type(instantiate(cfg.text_encoder)).__name__ == target
