"""Bad input refused before any work, with a message that names the value and the fix (docs/configuration.md,
"Bad input")."""

import io
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from rlar.build import check_batch_fits
from rlar.config.dir_name import MAX_NAME_BYTES, dir_name
from rlar.config.store import compose_config
from rlar.config.validate import ConfigError, check_config
from rlar.data.decode import load_image
from rlar.eval import cli
from rlar.policy.prior import cached_prior
from rlar.runtime.cache import load_checkpoint


@pytest.mark.parametrize("overrides,message", [
    (["algorithm.clip_eps=-0.1"], r"algorithm.clip_eps must be >= 0 .*got -0.1"),
    (["algorithm.clip_eps_high=-0.1"], r"algorithm.clip_eps_high must be >= 0 .*got -0.1"),
    (["algorithm=ppo", "algorithm.clip_eps=-1"], r"algorithm.clip_eps must be >= 0"),
    (["algorithm.epochs=0"], r"algorithm.epochs must be >= 1 .*got 0"),
    (["eval.max_items=-1"], r"eval.max_items must be >= 2 .*got -1"),
    (["eval.batch_size=0"], r"eval.batch_size must be >= 1, got 0"),
    (["rollout.mode=prefix", "rollout.prefix_len=65"], r"prefix_len=65 leaves none of the 64 tokens per image"),
    (["rollout.mode=prefix", "rollout.prefix_len=64"], r"prefix_len=64 leaves none of the 64 tokens per image"),
    (["data=image_folder", "data.root=/x", "data.channels=1", "tokenizer=llamagen_vq16", "tokenizer.checkpoint=/x"],
     r"data.channels=1 but the tokenizer reads 3-channel images; set data.channels=3"),
])
def test_bad_values_are_refused_with_the_fix(overrides, message):
    with pytest.raises(ConfigError, match=message):
        check_config(compose_config(overrides))


@pytest.mark.parametrize("overrides", [
    ["optimized_metric=eval/fid"],                               # not a metric the summary keeps
    ["optimized_metric=fd"],                                     # no group
    ["optimized_metric=eval/fd", "eval.classifier=false"],       # the judge is off
    ["optimized_metric=eval_cfg/fd"],                            # no guided evaluation
    ["optimized_metric=eval/inception_fid"],                     # Inception FID is off
])
def test_an_objective_the_run_does_not_measure_is_refused(overrides):
    with pytest.raises(ConfigError, match=rf"optimized_metric='{overrides[0].split('=')[1]}' is not measured"):
        check_config(compose_config(overrides))


@pytest.mark.parametrize("overrides", [["optimized_metric=eval/fd"], ["optimized_metric=eval/recall"],
                                       ["optimized_metric=eval_cfg/class_acc", "eval.guided_cfg_scale=2"]])
def test_an_objective_the_run_measures_passes(overrides):
    check_config(compose_config(overrides))


def test_a_prefix_within_the_tokens_passes():
    check_config(compose_config(["rollout.mode=prefix", "rollout.prefix_len=63"]))  # digits: 8x8, one token sampled


def test_a_prior_of_no_pretraining_steps_is_refused_before_the_split_is_encoded():
    with pytest.raises(ValueError, match=r"policy.pretrain.steps must be >= 1 .* got 0; or give policy.checkpoint"):
        cached_prior(None, "gpt_prior", {}, None, None, {"steps": 0}, None)  # nothing else is read first


def test_a_batch_larger_than_the_train_split_is_refused():
    check_batch_fits(10, 10)
    with pytest.raises(ValueError, match=r"train.batch_size=11 is larger than the train split \(10 images\)"):
        check_batch_fits(11, 10)


@pytest.mark.parametrize("content", [b"", b"not a checkpoint, a text file\n", b"PK\x03\x04broken zip"])
def test_an_unreadable_checkpoint_is_a_clean_error(tmp_path, content):
    path = tmp_path / "weights.pt"
    path.write_bytes(content)
    with pytest.raises(ValueError, match=rf"tokenizer.checkpoint: '.*weights.pt' \({len(content)} bytes\) is not a "
                                         "readable PyTorch checkpoint"):
        load_checkpoint(path, "tokenizer.checkpoint")


def test_a_saved_state_dict_still_loads(tmp_path):
    torch.save({"w": torch.ones(2)}, tmp_path / "ok.pt")
    assert load_checkpoint(tmp_path / "ok.pt", "x")["w"].tolist() == [1.0, 1.0]


def test_16_bit_png_keeps_its_grey_levels():
    pixels = np.array([[0, 257 * 64], [257 * 128, 65535]], dtype=np.uint16)
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, "PNG")
    buffer.seek(0)
    assert Image.open(buffer).mode.startswith("I")  # PIL reads it as 16-bit
    image = load_image(buffer, 2, 1)
    assert image.flatten().tolist() == [0, 64, 128, 255]


def test_a_long_override_list_gets_a_hashed_name():
    short = "algorithm.beta=0.1,train.batch_size=4"
    assert dir_name(short) == short
    long = ",".join(f"rollout.temperature={'1.' + '0' * 40}{i}" for i in range(10))
    name = dir_name(long)
    assert len(name.encode()) <= MAX_NAME_BYTES and name.startswith("rollout.temperature=1.0")
    assert name != dir_name(long[:-1] + "7")  # different overrides, different names


@pytest.mark.slow
def test_a_run_with_a_long_override_list_makes_its_directory(tmp_path):
    temperature = "rollout.temperature=1." + "0" * 300
    proc = subprocess.run([sys.executable, "-m", "rlar.run", temperature, "train.iterations=-1"], capture_output=True,
                          text=True, cwd=tmp_path)
    assert "config error: train.iterations must be >= 0" in proc.stderr, proc.stderr[-2000:]
    (run_dir,) = Path(tmp_path, "outputs", "default").iterdir()
    assert len(run_dir.name) <= MAX_NAME_BYTES
    assert temperature in (run_dir / ".hydra" / "overrides.yaml").read_text()  # the full overrides stay


@pytest.mark.parametrize("args,message", [
    (["--judge", "0"], r"--judge takes the number of eval seeds, at least 1, got 0"),
    (["text_encoder=embedded", "data.captions=attributes", "--judge", "2"],
     r"--judge scores class-conditional policies; a text-conditioned run"),
])
def test_rlar_eval_judge_refuses_bad_input_before_building_anything(args, message, monkeypatch):
    monkeypatch.setattr(cli, "build_models", None)  # nothing may be built, trained or read
    with pytest.raises(SystemExit, match=message):
        cli.run_command(args)


@pytest.mark.parametrize("args,message", [
    (["--judge", "1", "--samples-only"], "--samples-only does not apply to --judge"),
    (["--judge", "1", "--make-reference", "ref.npz"], "--make-reference does not apply to --judge"),
    (["--split", "train"], "--split train chooses the images of --make-reference OUT.npz"),
    (["--max-images", "5"], "--max-images 5 chooses the images of --make-reference OUT.npz"),
    (["--make-reference", "ref.npz", "--out", "here", "--cfg-scale", "0", "--labels", "random"],
     "--labels, --cfg-scale, --out: not read by --make-reference ref.npz, which writes the images of a data split"),
    (["--make-reference", "ref.npz", "--samples-only"], "--samples-only: not read by --make-reference"),
])
def test_rlar_eval_refuses_options_it_would_ignore(args, message, monkeypatch, tmp_path):
    monkeypatch.chdir(tmp_path)  # where an --out or a reference would be written, were it not refused
    monkeypatch.setattr(cli, "build_models", None)
    with pytest.raises(SystemExit, match=message):
        cli.run_command(args)


@pytest.mark.parametrize("extra, reads", [(["--judge", "1"], "--judge"), (["--make-reference", "ref.npz"],
                                                                          "--make-reference"),
                                          ([], r"the default reference \(the held-out split\)")])
def test_rlar_eval_refuses_reading_images_of_data_that_has_none(extra, reads, monkeypatch, tmp_path):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(cli, "build_models", None)
    (tmp_path / "prompts.txt").write_text("\n".join(f"a digit {i}" for i in range(8)))
    for name in ("policy.pt", "tokenizer.pt"):
        (tmp_path / name).write_bytes(b"")
    config = ["data=prompts", "data.path=prompts.txt", "eval.classifier=false", "policy.checkpoint=policy.pt",
              "tokenizer.checkpoint=tokenizer.pt", "reward=clip", "algorithm.ntp_weight=0"]
    with pytest.raises(SystemExit, match=f"{reads} reads the data's images, and data=rlar.data.prompts.PromptData "
                                         "has none"):
        cli.run_command([*config, *extra])


@pytest.mark.parametrize("overrides, message", [
    (["policy.dropout=0.1"], "policy.dropout=0.1 with GRPO: the update re-scores the samples"),
    (["algorithm=ppo", "algorithm.value_head=true", "rollout.mode=teacher_forced"], "algorithm.value_head=true with"),
    (["algorithm=reinforce", "algorithm.grad_accum=2"], "algorithm.grad_accum=2 does not apply to Reinforce"),
])
def test_what_only_an_rl_update_reads_wrongly_is_refused_only_where_one_runs(overrides, message):
    """An evaluation samples in eval mode and steps nothing, and rlar-prepare pretrains (with dropout if asked): a
    recorded run of these settings is still evaluated, and its prior prepared."""
    with pytest.raises(ConfigError, match=message):
        check_config(compose_config(overrides))
    check_config(compose_config(overrides), trains=False)  # rlar-eval, rlar-prepare, the studies' judges
    check_config(compose_config([*overrides, "train.iterations=0"]))  # the prior's evaluation only
