"""Captions of the digits text task: built from a digit's class and measured attributes ("a thick seven leaning
right"), read back by :func:`parse_caption`, and checked against an image's own measurements (:func:`caption_checks`).

Grammar (lower case; an optional trailing period): ``a|an [thin|medium|thick] <digit> [leaning left|standing
upright|leaning right]``, ``<digit>`` one of zero..nine. Built captions name both attributes; a prompt may leave
either out, and then nothing is checked for it.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import NamedTuple

import torch

from rlar.data.attributes import slant, thickness

DIGITS = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine")
THICKNESS = ("thin", "medium", "thick")  # the words of the grades of rlar.data.attributes.thickness
SLANT_PHRASES = ("leaning left", "standing upright", "leaning right")  # and of its slant
PATTERN = re.compile(rf"an? (?:({'|'.join(THICKNESS)}) )?({'|'.join(DIGITS)})(?: ({'|'.join(SLANT_PHRASES)}))?\.?")
GRAMMAR = "a|an [thin|medium|thick] <zero..nine> [leaning left|standing upright|leaning right]"
CHECKS = ("class_ok", "thickness_ok", "slant_ok")


class Caption(NamedTuple):
    """What a caption asks for: a digit, and a thickness (index into ``THICKNESS``) and slant (into
    ``SLANT_PHRASES``) grade, or None where it does not say."""

    digit: int
    thickness: int | None = None
    slant: int | None = None


def caption_text(c: Caption) -> str:
    """The caption's words, e.g. ``Caption(7, 2, 2)`` -> "a thick seven leaning right"."""
    words = ["a", *([] if c.thickness is None else [THICKNESS[c.thickness]]), DIGITS[c.digit],
             *([] if c.slant is None else [SLANT_PHRASES[c.slant]])]
    if words[1][0] in "aeiou":
        words[0] = "an"
    return " ".join(words)


def parse_caption(text: str) -> Caption | None:
    """The :class:`Caption` a text asks for, or None when it is not in the grammar (case and surrounding spaces
    ignored)."""
    m = PATTERN.fullmatch(" ".join(text.lower().split()))
    if m is None:
        return None
    size, digit, lean = m.groups()
    return Caption(DIGITS.index(digit), None if size is None else THICKNESS.index(size),
                   None if lean is None else SLANT_PHRASES.index(lean))


def attribute_captions(images: torch.Tensor, labels: torch.Tensor) -> list[str]:
    """The caption of each digit image ``[N, C, H, W]`` in [-1, 1] of class ``labels [N]``: its class, its measured
    thickness and slant."""
    sizes, leans = thickness(images, labels).tolist(), slant(images, labels).tolist()
    return [caption_text(Caption(d, t, s)) for d, t, s in zip(labels.tolist(), sizes, leans, strict=True)]


def caption_checks(images: torch.Tensor, captions: Sequence[Caption], seen: torch.Tensor | None
                   ) -> dict[str, torch.Tensor]:
    """Each check of ``captions`` (one per image ``[N, C, H, W]``) against the image, ``{name: [N]}`` float: 1
    passed, 0 failed, NaN where the caption asks nothing of it. ``class_ok``: the class a classifier ``seen [N]``
    in the image is the caption's digit; ``thickness_ok``, ``slant_ok``: the image's grade, measured as a digit
    of the caption's class, is the one asked. ``all_ok``: every asked check passed. Without ``seen`` there is no
    class check, and no ``all_ok``."""
    n = len(images)
    digits = torch.tensor([c.digit for c in captions], dtype=torch.long)  # [N]
    measured = {"thickness_ok": thickness(images, digits).cpu(), "slant_ok": slant(images, digits).cpu()}
    asked = {"thickness_ok": [c.thickness for c in captions], "slant_ok": [c.slant for c in captions]}
    if seen is not None:
        measured["class_ok"], asked["class_ok"] = seen.long().cpu(), digits.tolist()
    checks = {}
    for name in CHECKS:
        if name not in measured:
            continue
        want = torch.tensor([-1 if a is None else a for a in asked[name]])  # [N], -1: not asked
        checks[name] = torch.where(want >= 0, (measured[name] == want).float(), torch.full((n,), float("nan")))
    if seen is not None:
        stacked = torch.stack(list(checks.values()))  # [3, N]
        checks["all_ok"] = (stacked.nan_to_num(1.0) == 1).all(0).float()
    return {name: value.to(images.device) for name, value in checks.items()}
