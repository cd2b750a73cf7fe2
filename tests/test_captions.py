"""Captions of the digits text task: attributes measured from pixels (moments computed by hand here), captions built
from them, read back, and checked against images."""

import math

import pytest
import torch

from rlar.data.attributes import (
    MASS_TERTILES,
    SKEW_TERTILES,
    fit_tertiles,
    grade,
    ink_mass,
    slant,
    slant_skew,
    thickness,
)
from rlar.data.captions import (
    DIGITS,
    SLANT_PHRASES,
    THICKNESS,
    Caption,
    attribute_captions,
    caption_checks,
    caption_text,
    parse_caption,
)
from rlar.data.digits import DigitsData

SIZE = 32


def drawn(pixels: dict[tuple[int, int], float]) -> torch.Tensor:
    """A ``[1, 1, 32, 32]`` image in [-1, 1]: background -1, ink ``v`` in [0, 1] at (row, col) -> ``2v - 1``."""
    image = -torch.ones(1, 1, SIZE, SIZE)
    for (row, col), v in pixels.items():
        image[0, 0, row, col] = 2 * v - 1
    return image


def stroke(rows: range, width: int, left_of_row) -> dict[tuple[int, int], float]:
    """Full ink in ``width`` columns from ``left_of_row(row)`` in each of ``rows``."""
    return {(r, c): 1.0 for r in rows for c in range(left_of_row(r), left_of_row(r) + width)}


def moments_by_hand(pixels: dict[tuple[int, int], float]) -> tuple[float, float]:
    """(ink mass, -mu11/mu02) with plain Python sums over the inked pixels (x the column, y the row)."""
    m = sum(pixels.values())
    cx = sum(v * c for (r, c), v in pixels.items()) / m
    cy = sum(v * r for (r, c), v in pixels.items()) / m
    mu11 = sum(v * (c - cx) * (r - cy) for (r, c), v in pixels.items())
    mu02 = sum(v * (r - cy) ** 2 for (r, c), v in pixels.items())
    return m / SIZE**2, -mu11 / mu02


THICK_UPRIGHT = stroke(range(2, 30), 12, lambda r: 10)  # 28 x 12 = 336 pixels, straight
THIN_RIGHT = stroke(range(0, 32), 2, lambda r: 24 - r // 2)  # 64 pixels, top to the right: 2 rows per column
THIN_LEFT = stroke(range(0, 32), 2, lambda r: 6 + r // 2)  # its mirror image


def test_three_pixel_diagonal_by_hand():
    # ink at (0, 2), (1, 1), (2, 0): centroid (1, 1); mu11 = (1)(-1) + 0 + (-1)(1) = -2; mu02 = 1 + 0 + 1 = 2
    image = drawn({(0, 2): 1.0, (1, 1): 1.0, (2, 0): 1.0})
    assert slant_skew(image).item() == pytest.approx(1.0)
    assert ink_mass(image).item() == pytest.approx(3 / 1024)
    # half ink at (0, 2) moves the centroid: m = 2.5, cx = (0.5*2 + 1)/2.5 = 0.8, cy = (0 + 1 + 2)/2.5 = 1.2
    # mu11 = 0.5(1.2)(-1.2) + (0.2)(-0.2) + (-0.8)(0.8) = -1.4; mu02 = 0.5(1.44) + 0.04 + 0.64 = 1.4
    image = drawn({(0, 2): 0.5, (1, 1): 1.0, (2, 0): 1.0})
    assert slant_skew(image).item() == pytest.approx(1.0)
    assert ink_mass(image).item() == pytest.approx(2.5 / 1024)


@pytest.mark.parametrize("pixels", [THICK_UPRIGHT, THIN_RIGHT, THIN_LEFT], ids=["thick_upright", "thin_right",
                                                                                 "thin_left"])
def test_measurements_match_moments_by_hand(pixels):
    mass, skew = moments_by_hand(pixels)
    image = drawn(pixels)
    assert ink_mass(image).item() == pytest.approx(mass, rel=1e-5)
    assert slant_skew(image).item() == pytest.approx(skew, rel=1e-4, abs=1e-6)


def test_channels_are_averaged_and_a_blank_image_is_upright():
    rgb = drawn(THIN_RIGHT).repeat(1, 3, 1, 1)
    assert slant_skew(rgb).item() == pytest.approx(moments_by_hand(THIN_RIGHT)[1], rel=1e-4)
    blank = -torch.ones(1, 1, SIZE, SIZE)
    assert ink_mass(blank).item() == 0 and slant_skew(blank).item() == 0


def test_captions_of_hand_built_digits():
    """Each caption from its hand-computed measures and the stored tertiles of the digit's class."""
    cases = [(THICK_UPRIGHT, 1), (THIN_RIGHT, 7), (THIN_LEFT, 7), (THICK_UPRIGHT, 0)]
    images = torch.cat([drawn(p) for p, _ in cases])
    labels = torch.tensor([k for _, k in cases])
    expected = []
    for pixels, k in cases:
        mass, skew = moments_by_hand(pixels)
        size = sum(mass > float(t) for t in MASS_TERTILES[k])
        lean = sum(skew > float(t) for t in SKEW_TERTILES[k])
        expected.append(f"a {THICKNESS[size]} {DIGITS[k]} {SLANT_PHRASES[lean]}")
    assert attribute_captions(images, labels) == expected
    # and what those are: 336 px = 0.328 of the area is above every class's upper ink tertile but the eight's;
    # a straight stroke has skew 0, inside the one's middle band and above the zero's upper tertile (-0.0002:
    # zeros lean left); the thin strokes' skew is +-0.5, beyond every class's tertiles
    assert expected == ["a thick one standing upright", "a thin seven leaning right", "a thin seven leaning left",
                        "a medium zero leaning right"]


def test_grades_cut_at_the_tertiles_a_tie_takes_the_lower():
    tertiles = torch.tensor([[1.0, 2.0], [10.0, 20.0]])
    values = torch.tensor([0.5, 1.0, 1.5, 2.0, 2.5, 15.0])
    classes = torch.tensor([0, 0, 0, 0, 0, 1])
    assert grade(values, classes, tertiles).tolist() == [0, 0, 1, 1, 2, 1]
    with pytest.raises(ValueError, match="digit class 0..1, got classes"):
        grade(values[:1], torch.tensor([-1]), tertiles)


@pytest.fixture(scope="module")
def digits():
    return DigitsData(captions="attributes")


def test_stored_tertiles_are_the_train_splits(digits):
    assert torch.equal(fit_tertiles(ink_mass(digits.train_images), digits.train_labels, 10), MASS_TERTILES)
    assert torch.equal(fit_tertiles(slant_skew(digits.train_images), digits.train_labels, 10), SKEW_TERTILES)


def test_the_digits_are_in_minus_one_to_one_with_a_blank_background(digits):
    x = digits.train_images
    assert x.min() == -1 and x.max() == 1
    assert (x.flatten(1).amin(1) == -1).all()  # every digit has background, ink 0
    assert ((x + 1) / 2).mean().item() == pytest.approx(ink_mass(x).mean().item())


def test_train_captions_split_each_class_in_thirds(digits):
    parsed = [parse_caption(c) for c in digits.train_captions]
    assert len(parsed) == len(digits.train_labels) and None not in parsed
    assert [c.digit for c in parsed] == digits.train_labels.tolist()
    for k in range(10):
        mine = [c for c in parsed if c.digit == k]
        for attribute in ("thickness", "slant"):
            counts = [sum(getattr(c, attribute) == g for c in mine) for g in range(3)]
            assert all(abs(n - len(mine) / 3) <= 4 for n in counts), (k, attribute, counts)  # ties at the cuts


def test_every_caption_reads_back():
    for d in range(10):
        for t in (None, 0, 1, 2):
            for s in (None, 0, 1, 2):
                c = Caption(d, t, s)
                assert parse_caption(caption_text(c)) == c
    assert caption_text(Caption(8)) == "an eight" and caption_text(Caption(7, 2, 2)) == "a thick seven leaning right"
    assert parse_caption("  A Thin  ONE standing upright. ") == Caption(1, 0, 1)


@pytest.mark.parametrize("text", ["a big seven", "seven", "a thick 7", "a seven leaning", "a thick seven leaning "
                                  "right and a one", ""])
def test_text_outside_the_grammar_is_not_read(text):
    assert parse_caption(text) is None


def test_caption_checks_by_hand():
    images = torch.cat([drawn(THICK_UPRIGHT), drawn(THIN_RIGHT), drawn(THIN_RIGHT)])
    asks = [Caption(1, 2, 1), Caption(7, 2, 2), Caption(7)]  # all right; wrong thickness; the class only
    seen = torch.tensor([1, 3, 7])  # a classifier's reading: the second is not a seven
    checks = caption_checks(images, asks, seen)
    assert checks["class_ok"].tolist() == [1, 0, 1]
    assert checks["thickness_ok"][:2].tolist() == [1, 0] and math.isnan(checks["thickness_ok"][2])
    assert checks["slant_ok"][:2].tolist() == [1, 1] and math.isnan(checks["slant_ok"][2])
    assert checks["all_ok"].tolist() == [1, 0, 1]
    without_class = caption_checks(images, asks, None)
    assert set(without_class) == {"thickness_ok", "slant_ok"}


def test_an_image_meets_its_own_caption(digits):
    x, y = digits.eval_images[:50], digits.eval_labels[:50]
    asks = [parse_caption(c) for c in digits.eval_captions[:50]]
    checks = caption_checks(x, asks, y)
    assert all(v.eq(1).all() for v in checks.values())
    assert thickness(x, y).tolist() == [c.thickness for c in asks] and slant(x, y).tolist() == [c.slant for c in asks]
