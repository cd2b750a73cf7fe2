"""The two test tiers: a test not marked slow (the fast tier, ``-m "not slow"``) cannot start a process."""

import subprocess
import sys

import pytest


def test_a_fast_test_cannot_start_a_subprocess():
    with pytest.raises(RuntimeError, match="mark this test slow: it starts a subprocess"):
        subprocess.run([sys.executable, "-c", "pass"])
    with pytest.raises(RuntimeError, match="mark this test slow"):
        subprocess.check_output(["true"])


@pytest.mark.slow
def test_a_slow_test_can():
    assert subprocess.run([sys.executable, "-c", "print('ok')"], capture_output=True, text=True).stdout == "ok\n"
