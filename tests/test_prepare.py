import subprocess
import sys

import pytest


@pytest.mark.slow
def test_prepare_trains_then_reuses_the_cache(tiny, tmp_path):
    settings = [o for o in tiny if o.startswith(("cache_dir", "tokenizer", "policy"))]
    args = [sys.executable, "-m", "rlar.prepare", *settings, f"hydra.run.dir={tmp_path}/prep"]
    first = subprocess.run(args, capture_output=True, text=True, cwd=tmp_path)
    assert first.returncode == 0, first.stderr[-2000:]
    assert "held-out PSNR" in first.stdout
    second = subprocess.run(args, capture_output=True, text=True, cwd=tmp_path)
    assert "using cached" in second.stderr + second.stdout
    assert "not cached yet" not in second.stderr + second.stdout
