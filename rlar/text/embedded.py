"""The embedded text encoder (``text_encoder=embedded``): a small transformer over a word vocabulary given in the
config, trained together with the text-conditioned prior (``rlar.policy.prior``) and frozen during RL. Nothing is
downloaded: the vocabulary and the architecture are its whole definition.

A caption is lower-cased and split into words (runs of letters and digits); it reads ``<cls>`` and then its first
``max_length - 1`` words (a word outside the vocabulary is ``<unk>``), left-padded to ``max_length`` tokens.
"""

from __future__ import annotations

import logging
import re

import torch
from torch import nn

from rlar.text.encoder import TextEncoder

log = logging.getLogger(__name__)

SPECIAL = ("<pad>", "<unk>", "<cls>")
# words of digit captions (rlar.data.captions: "a thick seven leaning right") and of prompts about digits
DIGIT_WORDS = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine", "a", "an", "the",
               "digit", "number", "of", "and", "with", "is", "written", "thin", "thick", "bold", "light", "regular",
               "medium", "heavy", "normal", "stroke", "strokes", "leaning", "standing", "slanted", "tilted", "left",
               "right", "upright", "straight", "small", "large", "big", "wide", "narrow", "tall", "short")
WORD = re.compile(r"[a-z0-9]+")


class EmbeddedTextEncoder(TextEncoder):
    """Word embeddings plus learned positions (by word index), ``n_layer`` pre-norm transformer encoder layers over
    the caption's tokens (padding masked), a final LayerNorm; features are zero at padding. ``dim`` = ``width``."""

    trainable = True

    def __init__(self, vocabulary: tuple[str, ...] = DIGIT_WORDS, max_length: int = 16, width: int = 64,
                 n_layer: int = 2, n_head: int = 4):
        super().__init__()
        words = [*SPECIAL, *(str(w).lower() for w in vocabulary)]
        if len(set(words)) != len(words) or any(not WORD.fullmatch(w) for w in words[len(SPECIAL):]):
            raise ValueError("text_encoder.vocabulary must list distinct lower-case words of letters and digits, "
                             f"none of {SPECIAL}")
        if max_length < 2:
            raise ValueError(f"text_encoder.max_length must be >= 2 (<cls> and a word), got {max_length}")
        if width % n_head:
            raise ValueError(f"text_encoder.width={width} must be divisible by text_encoder.n_head={n_head}")
        self.words, self.index = words, {w: i for i, w in enumerate(words)}
        self.vocabulary = words[len(SPECIAL):]
        self.dim, self.max_length, self.width, self.n_layer, self.n_head = width, max_length, width, n_layer, n_head
        self.unknown: set[str] = set()
        self.embed = nn.Embedding(len(words), width)
        self.pos_emb = nn.Parameter(torch.randn(max_length, width) * 0.02)
        layer = nn.TransformerEncoderLayer(width, n_head, 4 * width, dropout=0.0, activation="gelu", batch_first=True,
                                           norm_first=True)
        self.blocks = nn.TransformerEncoder(layer, n_layer, enable_nested_tensor=False)
        self.norm = nn.LayerNorm(width)
        nn.init.normal_(self.embed.weight, std=0.02)

    def spec(self) -> dict:
        return {"class": "embedded", "vocabulary": self.vocabulary, "max_length": self.max_length, "width": self.width,
                "n_layer": self.n_layer, "n_head": self.n_head}

    def tokenize(self, captions: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
        """``(ids [N, L] long, mask [N, L] bool)``, left-padded, on the encoder's device."""
        ids = torch.zeros(len(captions), self.max_length, dtype=torch.long)
        for i, caption in enumerate(captions):
            words = WORD.findall(str(caption).lower())[: self.max_length - 1]
            new = {w for w in words if w not in self.index} - self.unknown
            if new:
                log.warning("embedded text encoder: words outside text_encoder.vocabulary read as <unk>: %s",
                            sorted(new))
                self.unknown |= new
            row = [self.index["<cls>"], *(self.index.get(w, self.index["<unk>"]) for w in words)]
            ids[i, self.max_length - len(row):] = torch.tensor(row)
        device = self.pos_emb.device
        return ids.to(device), (ids != self.index["<pad>"]).to(device)

    def forward(self, ids: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """Token ids and mask ``[N, L]`` -> features ``[N, L, E]`` (zero at padding)."""
        positions = (mask.long().cumsum(1) - 1).clamp(min=0)  # a word's index in its caption
        x = self.embed(ids) + self.pos_emb[positions]
        x = self.blocks(x, src_key_padding_mask=~mask)
        return self.norm(x) * mask[..., None]

    def encode(self, captions: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
        ids, mask = self.tokenize(captions)
        return self(ids, mask), mask
