"""Frozen Hugging Face text encoders from local weights (never downloaded): T5 (``text_encoder=t5``; LlamaGen-T2I
reads FLAN-T5-XL's) and CLIP's text tower (``text_encoder=clip``). A caption's features are the encoder's last
hidden states at its tokens (padded to ``max_length`` and truncated there, as LlamaGen encodes), computed once and
kept (``rlar.text.feature_cache``)."""

from __future__ import annotations

import hashlib
from pathlib import Path

import torch

from rlar.runtime.local_models import local_model_dir
from rlar.text.encoder import TextEncoder, left_pad
from rlar.text.feature_cache import FeatureCache

INSTALL = "pip install -e '.[text]'"
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


# the small files that shape a caption's features besides the weights: hashed whole (those the folder has)
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "added_tokens.json",
                   "spiece.model", "sentencepiece.bpe.model", "vocab.json", "vocab.txt", "merges.txt")
WEIGHT_SUFFIXES = (".safetensors", ".bin")
SAMPLES, SAMPLE_BYTES = 16, 1 << 18  # a weight file's samples: 16 of 256 KiB, evenly spaced from start to end


def weight_samples(file: Path, count: int = SAMPLES, sample: int = SAMPLE_BYTES) -> list[bytes]:
    """``count`` blocks of ``sample`` bytes of ``file``, the first at its start, the last at its end, the others
    evenly between (the whole file when it is no larger than them): 4 MiB of a 20 GB file."""
    size = file.stat().st_size
    with open(file, "rb") as f:
        if size <= count * sample:
            return [f.read()]
        blocks = []
        for i in range(count):
            f.seek(i * (size - sample) // (count - 1))
            blocks.append(f.read(sample))
        return blocks


def model_fingerprint(path: Path) -> str:
    """A hash of a model folder's content, independent of where it lies: ``config.json`` and the tokenizer's files
    whole, and each weight file's name, size and 4 MiB sampled across it (:func:`weight_samples`), so another
    fine-tune of the same base, or weights overwritten in place, gets a new key without reading gigabytes (a
    fine-tune that changes only tensors lying between the samples would keep it)."""
    digest = hashlib.sha1((path / "config.json").read_bytes())
    for name in TOKENIZER_FILES:
        if (path / name).is_file():
            digest.update(f"{name}:".encode() + hashlib.sha1((path / name).read_bytes()).digest())
    for file in sorted(path.iterdir()):
        if file.suffix in WEIGHT_SUFFIXES:
            digest.update(f"{file.name}:{file.stat().st_size}".encode())
            for block in weight_samples(file):
                digest.update(hashlib.sha1(block).digest())
    return digest.hexdigest()[:16]


class HFTextEncoder(TextEncoder):
    """A transformers text model (``model_class``) and its tokenizer from the local folder ``model_path``."""

    model_class = ""
    example_repo = ""  # a Hugging Face repository with such a model, named in the hint of a missing folder

    def __init__(self, model_path: str, max_length: int, dtype: str = "float32", batch_size: int = 32,
                 feature_cache: str | None = None, memory_cache_size: int = 65536, lowercase: bool = False):
        super().__init__()
        path = local_model_dir(model_path, "text_encoder.model_path", self.model_class, self.example_repo)
        if dtype not in DTYPES:
            raise ValueError(f"text_encoder.dtype={dtype!r}: choose one of {list(DTYPES)}")
        if max_length < 1 or batch_size < 1:
            raise ValueError(f"text_encoder.max_length and batch_size must be >= 1, got {max_length}, {batch_size}")
        try:
            import transformers
        except ImportError as err:
            raise ImportError(f"text_encoder={self.model_class} needs Hugging Face transformers: {INSTALL}") from err
        self.tokenizer = transformers.AutoTokenizer.from_pretrained(path, local_files_only=True)
        model = getattr(transformers, self.model_class).from_pretrained(path, local_files_only=True)
        self.model = model.to(DTYPES[dtype]).eval().requires_grad_(False)
        self.dim = self.model.config.hidden_size
        self.max_length, self.batch_size, self.dtype, self.lowercase = max_length, batch_size, dtype, lowercase
        self.check_length()
        self.key = {"class": self.model_class, "model": model_fingerprint(path), "max_length": max_length,
                    "dtype": dtype, **({"lowercase": True} if lowercase else {})}  # off: the keys cached before
        # features cached before they were computed outside a caller's autocast may be bf16 ones: not read
        self.cache = FeatureCache({**self.key, "autocast": "off"}, feature_cache, memory_cache_size)

    def check_length(self) -> None:
        """A model-specific limit on ``max_length`` (none by default)."""

    def train(self, mode: bool = True) -> HFTextEncoder:
        return super().train(False)  # frozen: always in eval mode

    def spec(self) -> dict:
        return dict(self.key)

    @torch.no_grad()
    def features(self, captions: list[str]) -> list[torch.Tensor]:
        """Each caption's features ``[l, E]`` at its (at most ``max_length``) tokens, computed in the model's dtype
        (``dtype``, whatever autocast a caller runs under: the cache keys them by it)."""
        device = next(self.model.parameters()).device
        texts = [c.lower() for c in captions] if self.lowercase else captions
        batch = self.tokenizer(texts, max_length=self.max_length, padding="max_length", truncation=True,
                               return_tensors="pt").to(device)
        with torch.autocast(device.type, enabled=False):
            states = self.model(input_ids=batch["input_ids"],
                                attention_mask=batch["attention_mask"]).last_hidden_state
        return [states[i, batch["attention_mask"][i].bool()] for i in range(len(captions))]

    def encode(self, captions: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
        found = {c: f for c in dict.fromkeys(captions) if (f := self.cache.get(c)) is not None}
        missing = [c for c in dict.fromkeys(captions) if c not in found]
        for i in range(0, len(missing), self.batch_size):
            chunk = missing[i : i + self.batch_size]
            for caption, features in zip(chunk, self.features(chunk), strict=True):
                self.cache.put(caption, features)
                found[caption] = features
        return left_pad([found[c] for c in captions], self.max_length, next(self.model.parameters()).device)


class T5TextEncoder(HFTextEncoder):
    """``transformers.T5EncoderModel``: FLAN-T5-XL (width 2048) for LlamaGen-T2I, ``max_length`` 120."""

    model_class = "T5EncoderModel"
    example_repo = "google/flan-t5-xl"


class CLIPTextEncoder(HFTextEncoder):
    """``transformers.CLIPTextModel``: the text tower of a CLIP model (``max_length`` at most its positions, 77)."""

    model_class = "CLIPTextModel"
    example_repo = "openai/clip-vit-large-patch14"

    def check_length(self) -> None:
        positions = self.model.config.max_position_embeddings
        if self.max_length > positions:
            raise ValueError(f"text_encoder.max_length={self.max_length} is more than the {positions} positions of "
                             f"this CLIP text model; set text_encoder.max_length<={positions}")
