"""What users' files hold beyond the plain case: a camera photo's EXIF orientation, a byte-order mark or another
encoding in a text file, line separators other than the newline, an empty class folder, a held-out prompts file
that is the train one."""

import io

import numpy as np
import pytest
from PIL import Image

from rlar.data.decode import load_image
from rlar.data.image_folder import ImageFolderData, read_caption
from rlar.data.prompts import PromptData, read_prompts


def test_a_photo_is_read_upright_as_its_exif_orientation_says():
    """Stored 64 x 32 with its left half white and tagged "rotate 90° clockwise" (6): a viewer shows it 32 x 64 with
    the white half on top, and so is it read."""
    pixels = np.zeros((32, 64), dtype=np.uint8)
    pixels[:, :32] = 255
    exif = Image.Exif()
    exif[0x0112] = 6  # Orientation
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="PNG", exif=exif)
    buffer.seek(0)
    image = load_image(buffer, 32, 1)[0].float()  # [32, 32]: the center of the upright 32 x 64
    assert image[:8].mean() == 255 and image[-8:].mean() == 0  # not left and right


def test_a_byte_order_mark_is_not_part_of_the_first_prompt_or_a_caption(tmp_path):
    path = tmp_path / "prompts.txt"
    path.write_bytes("\ufeffa thick seven leaning right\nan eight\n".encode())
    assert read_prompts(str(path), "path") == ["a thick seven leaning right", "an eight"]
    caption = tmp_path / "image.txt"
    caption.write_bytes("\ufeffa thin one\n".encode())
    assert read_caption(caption) == "a thin one"


def test_prompts_are_split_at_newlines_alone(tmp_path):
    path = tmp_path / "prompts.txt"
    path.write_text("a red car\u2028parked by the sea\r\nan eight\x0bwith a loop\n\na thick seven\n", encoding="utf-8")
    assert read_prompts(str(path), "path") == ["a red car\u2028parked by the sea", "an eight\x0bwith a loop",
                                               "a thick seven"]


def test_a_prompts_file_that_is_not_utf8_is_refused_naming_the_option(tmp_path):
    path = tmp_path / "latin1.txt"
    path.write_bytes("a café\nan eight\n".encode("latin-1"))
    with pytest.raises(ValueError, match=r"data.eval_path='.*latin1.txt' is not UTF-8 text .*re-save it as UTF-8"):
        read_prompts(str(path), "eval_path")


def test_held_out_prompts_from_the_train_file_are_refused(tmp_path, monkeypatch):
    path = tmp_path / "prompts.txt"
    path.write_text("a one\n" * 10, encoding="utf-8")
    monkeypatch.chdir(tmp_path)
    with pytest.raises(ValueError, match=r"data.eval_path='./prompts.txt' is data.path: the held-out prompts"):
        PromptData(str(path), eval_path="./prompts.txt")


def test_a_class_folder_without_images_is_refused(tmp_path):
    for name, count in (("ant", 3), ("bee", 0), ("cat", 3)):
        (tmp_path / name).mkdir()
        for i in range(count):
            Image.fromarray(np.full((8, 8), 40 * i, dtype=np.uint8)).save(tmp_path / name / f"{i}.png")
    with pytest.raises(ValueError, match=r"the class folders \['bee'\] under '.*' hold no image files"):
        ImageFolderData(str(tmp_path), image_size=8, channels=1, eval_fraction=0.3)
    Image.fromarray(np.zeros((8, 8), dtype=np.uint8)).save(tmp_path / "bee" / "0.png")
    data = ImageFolderData(str(tmp_path), image_size=8, channels=1, eval_fraction=0.3)
    assert data.classes == ["ant", "bee", "cat"] and data.num_classes == 3
