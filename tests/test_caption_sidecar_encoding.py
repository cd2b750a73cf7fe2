"""A caption sidecar that is not UTF-8 text: an error naming the file and the fix, whether it is read when the data
is built (a held-out image's) or when a batch's captions are (a training image's)."""

import re

import numpy as np
import pytest
import torch
from PIL import Image

from rlar.data.image_folder import ImageFolderData


def write_folder(root, captions: list[bytes]):
    """``root/a/<i>.png`` (8x8 grey) with its sidecar ``<i>.txt`` holding ``captions[i]`` as given."""
    (root / "a").mkdir(parents=True)
    for i, caption in enumerate(captions):
        Image.fromarray(np.full((8, 8), 10 * i, dtype=np.uint8)).save(root / "a" / f"{i}.png")
        (root / "a" / f"{i}.txt").write_bytes(caption)


@pytest.mark.parametrize("where", ["root", "eval_root"])
def test_a_latin_1_sidecar_is_an_error_naming_it_and_the_fix(tmp_path, where):
    utf8 = ["café".encode(), b"tea", b"milk"]
    write_folder(tmp_path / "root", utf8)
    write_folder(tmp_path / "eval", utf8)
    bad = tmp_path / ("root" if where == "root" else "eval") / "a" / "1.txt"
    bad.write_bytes("caf\xe9".encode("latin-1"))
    message = f"caption file '{re.escape(str(bad))}' is not UTF-8 text .*re-save it as UTF-8"
    with pytest.raises(ValueError, match=message):
        data = ImageFolderData(str(tmp_path / "root"), image_size=8, channels=1, eval_root=str(tmp_path / "eval"),
                               captions="sidecar")  # the held-out captions are read here
        assert sorted(data.eval_captions) == ["café", "milk", "tea"]
        data.captions_of(torch.arange(3))  # the training captions, read on access
