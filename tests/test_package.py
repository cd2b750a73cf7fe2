"""rlar installs from a wheel (not editable) with its configuration inside: rlar-run finds it from any directory."""

import os
import shutil
import site
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


def run(args, cwd, env):
    out = subprocess.run([str(a) for a in args], cwd=cwd, env=env, capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, f"{args} failed:\n{out.stdout}\n{out.stderr}"
    return out.stdout


@pytest.mark.slow  # builds a wheel and a virtual environment
def test_wheel_install_gives_an_rlar_run_that_finds_its_config(tmp_path):
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}  # only the installed rlar may be found
    source = tmp_path / "source"  # a copy, so that the build leaves nothing in the checkout
    shutil.copytree(REPO / "rlar", source / "rlar", ignore=shutil.ignore_patterns("__pycache__"))
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(REPO / name, source / name)
    # no build isolation: setuptools comes from this environment, nothing is downloaded
    run([sys.executable, "-m", "pip", "wheel", source, "--no-deps", "--no-build-isolation", "-q", "-w",
         tmp_path / "wheels"], tmp_path, env)
    (wheel,) = (tmp_path / "wheels").glob("rlar-*.whl")
    venv = tmp_path / "venv"
    run([sys.executable, "-m", "venv", "--system-site-packages", venv], tmp_path, env)
    python = venv / "bin" / "python"
    # torch and the other dependencies from this environment (a venv made from a venv sees only the base
    # interpreter's packages): its site-packages as a plain path, so its editable rlar (a .pth hook) stays out
    venv_site = Path(run([python, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"], tmp_path,
                         env).strip())
    (venv_site / "rlar_test_deps.pth").write_text("\n".join(site.getsitepackages()) + "\n")
    run([python, "-m", "pip", "install", "--no-deps", "--no-index", "-q", wheel], tmp_path, env)

    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    installed = run([python, "-c", "import rlar; print(rlar.__file__)"], elsewhere, env).strip()
    assert Path(installed).is_relative_to(venv), installed
    assert (Path(installed).parent / "conf" / "config.yaml").is_file()
    help_text = run([venv / "bin" / "rlar-run", "--help"], elsewhere, env)
    for group in ("algorithm", "data", "logger", "policy", "reward", "tokenizer"):
        assert f"{group}:" in help_text
    job = run([venv / "bin" / "rlar-run", "--cfg", "job", "logger=wandb"], elsewhere, env)
    assert "_target_: rlar.runtime.wandb_logger.WandbLogger" in job and "num_generations: 8" in job
    assert "rlar-export" in run([venv / "bin" / "rlar-export", "--help"], elsewhere, env)
    assert not list(elsewhere.iterdir())  # printing the config runs nothing and writes nothing
