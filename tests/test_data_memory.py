"""Resident memory of data on disk stays flat as the data set grows (the train split is decoded on access)."""

import pytest

from rlar.data.memory_bench import measure_in_subprocess, write_folder


@pytest.mark.slow
def test_peak_memory_stays_flat_from_2k_to_20k_images(tmp_path):
    # at 96 px an RGB image takes 27 KiB as uint8: 20k of them held in memory would add ~530 MiB (more than half of
    # the ~750 MiB a process takes with torch and datasets imported), 2k of them ~53 MiB
    peak = {n: measure_in_subprocess(write_folder(tmp_path / str(n), n), image_size=96)["peak_rss_mib"]
            for n in (2_000, 20_000)}
    assert peak[20_000] / peak[2_000] < 1.2, peak
