"""Resident memory of data on disk stays flat as the data set grows (the train split is decoded on access), and an
evaluation of a few items converts only those to floats."""

import pytest
import torch

from rlar.data import stored
from rlar.data.digits import DigitsData
from rlar.data.image_folder import ImageFolderData
from rlar.data.memory_bench import measure_in_subprocess, write_folder
from rlar.data.stored import to_unit_range


@pytest.mark.slow
def test_peak_memory_stays_flat_from_2k_to_20k_images(tmp_path):
    # at 96 px an RGB image takes 27 KiB as uint8: 20k of them held in memory would add ~530 MiB (more than half of
    # the ~750 MiB a process takes with torch and datasets imported), 2k of them ~53 MiB
    peak = {n: measure_in_subprocess(write_folder(tmp_path / str(n), n), image_size=96)["peak_rss_mib"]
            for n in (2_000, 20_000)}
    assert peak[20_000] / peak[2_000] < 1.2, peak


def test_eval_images_of_some_items_convert_only_those(tmp_path, monkeypatch):
    """An evaluation of M items converts M images to floats, not the whole eval split (4x its uint8 bytes)."""
    data = ImageFolderData(str(write_folder(tmp_path / "imgs", 200)), image_size=16, eval_fraction=0.5)
    items = torch.tensor([3, 0, 7])
    expected = data.eval_images[items]  # [3, 3, 16, 16]
    converted = []
    monkeypatch.setattr(stored, "to_unit_range", lambda x: converted.append(len(x)) or to_unit_range(x))
    assert torch.equal(data.eval_images_of(items), expected) and converted == [3]
    assert torch.equal(DigitsData().eval_images_of(items), DigitsData().eval_images[items])
