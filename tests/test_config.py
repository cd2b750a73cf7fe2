import subprocess
import sys
from pathlib import Path

import pytest
import torch
from hydra.errors import ConfigCompositionException
from hydra.utils import instantiate

import rlar
from rlar.config.store import CONF_DIR, compose_config
from rlar.config.validate import ConfigError, check_config
from rlar.runtime.optimizer import build_optimizer

GROUPS = ["data", "tokenizer", "policy", "algorithm", "reward", "hardware", "logger", "scheduler"]
OPTIONS = [(g, p.stem) for g in GROUPS for p in sorted((CONF_DIR / g).glob("*.yaml"))]
# no pretrained backbone can be downloaded in tests
OFFLINE = {"lpips": ["reward.pnet_rand=true"], "vapi": ["reward.components.lpips.pnet_rand=true"]}


# built on real files: tests/test_data_hf_disk_and_image_folder.py, test_caption_data.py, test_reward_clip.py
NEEDS_FILES = {"hf_disk", "image_folder", "prompts", "clip"}
# GPU and torchrun options: checked here on the CPU, as rank 0 of a torchrun job of one process
ELSEWHERE = {"cuda": ["hardware.device=cpu"], "ddp": ["hardware.device=cpu"], "fsdp": ["hardware.device=cpu"]}
WITH_MODE = {"arpg": ["rollout.mode=parallel"]}  # a parallel decoder goes with its rollout mode
# a reward of the decoding steps goes with the learned schedule
WITH_MODE.update({name: ["experiment=arpg_schedule"] for name in ("efficiency", "perceptual_efficiency")})
# the public tokenizers read RGB: checked with RGB data (the digits are grayscale)
RGB = ["data=image_folder", "data.root=/images"]
WITH_DATA = {name: RGB for name in ("llamagen_vq16", "llamagen_vq8", "taming_vqgan", "ibq")}
# prompts without images: no judge, checkpoints for the tokenizer and prior (here only their existence is checked),
# a reward that reads no target image, no next-token term (no ground-truth codes)
WITH_DATA["prompts"] = ["data.path=/prompts.txt", "eval.classifier=false", "algorithm.ntp_weight=0",
                        f"tokenizer.checkpoint={__file__}", f"policy.checkpoint={__file__}", "reward=sharpness"]


@pytest.mark.parametrize("group,option", OPTIONS)
def test_every_option_composes_and_passes_checks(group, option, monkeypatch):
    if group == "hardware":
        monkeypatch.setenv("RANK", "0")
        monkeypatch.setenv("WORLD_SIZE", "1")
    cfg = compose_config([f"{group}={option}", *OFFLINE.get(option, []), *ELSEWHERE.get(option, []),
                          *WITH_MODE.get(option, []), *WITH_DATA.get(option, [])])
    assert cfg[group]._target_.startswith(("rlar.", "torch."))
    check_config(cfg)
    if group in ("algorithm", "reward", "hardware", "logger", "data") and option not in NEEDS_FILES:
        assert instantiate(cfg[group]) is not None


EXPERIMENTS = sorted(p.stem for p in (CONF_DIR / "experiment").glob("*.yaml"))


@pytest.mark.parametrize("experiment", EXPERIMENTS)
def test_every_experiment_composes_and_passes_checks(experiment, monkeypatch, tmp_path):
    """The recipes in conf/experiment/ (the LlamaGen ones as rank 0 of a torchrun job of one process, on the CPU;
    its paths: files and a folder that holds a config.json, whose existence is all that is checked here)."""
    monkeypatch.setenv("RANK", "0")
    monkeypatch.setenv("WORLD_SIZE", "1")
    (tmp_path / "config.json").write_text("{}")
    needs = {"llamagen_t2i": [f"data.path={__file__}", f"tokenizer.checkpoint={__file__}",
                              f"policy.checkpoint={__file__}", f"text_encoder.model_path={tmp_path}",
                              f"reward.model_path={tmp_path}"]}
    cfg = compose_config([f"experiment={experiment}", "hardware.device=cpu", *needs.get(experiment, [])])
    check_config(cfg)
    assert cfg.name


def test_schema_rejects_wrong_type_and_unknown_key():
    with pytest.raises(ConfigCompositionException, match="iterations"):
        compose_config(["train.iterations=ten"])
    with pytest.raises(ConfigCompositionException, match="num_generation"):
        compose_config(["algorithm.num_generation=4"])


def test_unknown_group_option_names_the_choices():
    with pytest.raises(ConfigCompositionException, match="(?s)algorithm/ppo_typo.*grpo"):
        compose_config(["algorithm=ppo_typo"])


@pytest.mark.parametrize("override,message", [
    ("algorithm.num_generations=1", "at least 2 generations"),
    ("policy.vocab_size=32", "does not match the tokenizer's codebook"),
    ("policy.checkpoint=/does/not/exist.pt", "does not exist"),
    ("tokenizer.checkpoint=/does/not/exist.pt", "does not exist"),
    ("hardware.precision=fp8", "precision"),
    ("train.iterations=-1", "train.iterations must be >= 0"),
])
def test_bad_values_are_refused_before_any_work(override, message):
    with pytest.raises(ConfigError, match=message):
        check_config(compose_config([override]))


@pytest.mark.slow
def test_cli_reports_config_error_without_traceback(tmp_path):
    proc = subprocess.run([sys.executable, "-m", "rlar.run", "algorithm.num_generations=1",
                           f"hydra.run.dir={tmp_path}/run"], capture_output=True, text=True, cwd=tmp_path)
    assert proc.returncode != 0
    assert "config error: GRPO needs at least 2 generations" in proc.stderr
    assert "Traceback" not in proc.stderr
    assert not (tmp_path / "run" / "summary.json").exists()


BIN = Path(sys.executable).parent


@pytest.mark.parametrize("command", [[sys.executable, "-m", "rlar.run"], [str(BIN / "rlar-run")],
                                     [str(BIN / "rlar-prepare")]])
@pytest.mark.slow
def test_help_lists_the_groups(command, tmp_path):
    """Both entry points, the module and the console scripts, find the config from any directory."""
    out = subprocess.run([*command, "--help"], capture_output=True, text=True, cwd=tmp_path).stdout
    for group in GROUPS:
        assert f"{group}:" in out


def test_conf_dir_ships_in_the_package():
    assert (Path(CONF_DIR) / "config.yaml").is_file() and Path(CONF_DIR).parent == Path(rlar.__file__).parent


def test_an_optimizer_without_betas_is_built_with_betas_null():
    """SGD takes no betas: ``optimizer.betas=null`` leaves them out (the table of bad input has the refusal)."""
    cfg = compose_config(["optimizer._target_=torch.optim.SGD", "optimizer.betas=null", "optimizer.lr=0.5"])
    check_config(cfg, inception_eval=False)
    optimizer = build_optimizer(cfg.optimizer, [torch.zeros(1, requires_grad=True)])
    assert type(optimizer) is torch.optim.SGD and optimizer.param_groups[0]["lr"] == 0.5
