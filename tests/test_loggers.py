"""The loggers: TensorBoard, W&B (offline, its run file read back) and several at once (logger=multi)."""

import errno
import io
import json
import struct
import time

import numpy as np
import pytest
import torch
import yaml
from hydra.utils import instantiate
from PIL import Image
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from rlar.config.store import compose_config
from rlar.contracts import Logger
from rlar.runtime.logger import TensorBoardLogger, group_grid, images_due
from rlar.runtime.multi_logger import MultiLogger
from rlar.runtime.wandb_logger import WandbLogger

TARGETS = torch.rand(3, 3, 8, 8, generator=torch.Generator().manual_seed(0)) * 2 - 1  # [B, C, H, W]
SAMPLES = torch.rand(6, 3, 8, 8, generator=torch.Generator().manual_seed(1)) * 2 - 1  # [B*G, C, H, W], G = 2


def tb_events(log_dir):
    events = EventAccumulator(str(log_dir), size_guidance={"images": 0, "scalars": 0})
    events.Reload()
    return events


def test_every_logger_satisfies_the_contract():
    for option in ("tensorboard", "wandb", "multi"):
        assert isinstance(instantiate(compose_config([f"logger={option}"]).logger), Logger)


def test_images_are_due_every_image_every_steps_and_at_the_first():
    assert [s for s in range(12) if images_due(5, s)] == [0, 1, 5, 10]
    assert not any(images_due(0, s) for s in range(12))


def test_multi_logger_hands_each_logger_its_own_cadence(tmp_path):
    every_step = TensorBoardLogger("every_step", log_every=1, image_every=2)
    sparse = TensorBoardLogger("sparse", log_every=2, image_every=3)
    multi = MultiLogger({"a": every_step, "b": sparse})
    assert multi.image_every == 1  # gcd(2, 3): the loop makes a grid whenever one of them wants it
    multi.open(tmp_path)
    for step in range(1, 7):
        multi.scalars({"reward/mean": float(step)}, step)
        if images_due(multi.image_every, step):
            multi.groups("samples/input_then_group", TARGETS, SAMPLES, step)
    multi.close()
    for logger, scalar_steps, image_steps in ((every_step, [1, 2, 3, 4, 5, 6], [1, 2, 4, 6]),
                                              (sparse, [2, 4, 6], [1, 3, 6])):
        events = tb_events(tmp_path / logger.log_dir)
        assert [e.step for e in events.Scalars("reward/mean")] == scalar_steps
        assert [e.value for e in events.Scalars("reward/mean")] == scalar_steps
        assert [e.step for e in events.Images("samples/input_then_group")] == image_steps


def test_multi_logger_of_no_images_makes_none():
    assert MultiLogger({"a": TensorBoardLogger(image_every=0)}).image_every == 0


# -- W&B, offline -----------------------------------------------------------------------------------------------

BLOCK = 32 * 1024


def wandb_records(path):
    """The records of a W&B run file: a 7-byte header (``:W&B``, magic, version), then the LevelDB log format
    (32 KiB blocks; each fragment a 7-byte header - checksum, little-endian length, kind: 1 full, 2 first,
    3 middle, 4 last - and its bytes; a block's tail shorter than a header is padding)."""
    from wandb.proto.wandb_internal_pb2 import Record

    data = path.read_bytes()
    assert data[:4] == b":W&B"
    pos, pending, records = 7, b"", []
    while len(data) - pos >= 7:
        if BLOCK - pos % BLOCK < 7:
            pos += BLOCK - pos % BLOCK
            continue
        length, kind = struct.unpack("<HB", data[pos + 4:pos + 7])
        if pos + 7 + length > len(data):  # a fragment still being written
            break
        pending += data[pos + 7:pos + 7 + length]
        pos += 7 + length
        if kind in (1, 4):
            record = Record()
            record.ParseFromString(pending)
            records.append(record)
            pending = b""
    return records


def wandb_logged(run_dir, kind="history"):
    """What a run logged, read back from its offline run file: ``[{key: value}]``, one dict per ``history`` row or
    ``config`` update."""
    (run_file,) = run_dir.glob("wandb/offline-run-*/run-*.wandb")
    records = wandb_records(run_file)
    for _ in range(300):  # the W&B service writes the file on its own: wait for the run's exit record
        if any(r.WhichOneof("record_type") == "exit" for r in records):
            break
        time.sleep(0.1)
        records = wandb_records(run_file)
    records = [r for r in records if r.WhichOneof("record_type") == kind]
    items = (lambda r: r.history.item) if kind == "history" else (lambda r: r.run.config.update)
    return [{item.key or "/".join(item.nested_key): json.loads(item.value_json) for item in items(r)} for r in records]


@pytest.fixture
def offline_wandb(tmp_path, monkeypatch):
    """W&B with no network and nothing written outside ``tmp_path``."""
    pytest.importorskip("wandb")
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_SILENT", "true")
    for var in ("WANDB_CONFIG_DIR", "WANDB_CACHE_DIR", "WANDB_DATA_DIR", "WANDB_ARTIFACT_DIR"):
        monkeypatch.setenv(var, str(tmp_path / "wandb_home"))


@pytest.mark.slow  # wandb runs its service in a process of its own
def test_wandb_logs_scalars_and_an_image_offline(tmp_path, offline_wandb):
    (tmp_path / ".hydra").mkdir()
    (tmp_path / ".hydra" / "config.yaml").write_text(yaml.safe_dump({"algorithm": {"beta": 0.04}}))
    logger = WandbLogger(project="rlar-test", log_every=1, image_every=1)
    logger.open(tmp_path)
    logger.scalars({"eval/reward": -0.25}, 0)
    logger.scalars({"reward/mean": 0.5, "loss/policy": 1.5}, 1)
    logger.groups("samples/input_then_group", TARGETS, SAMPLES, 1)
    logger.close()
    rows = wandb_logged(tmp_path)
    assert wandb_logged(tmp_path, "run")[0]["algorithm"] == {"beta": 0.04}  # the run's composed config
    assert {"eval/reward": -0.25, "iteration": 0}.items() <= rows[0].items()
    assert {"reward/mean": 0.5, "loss/policy": 1.5, "iteration": 1}.items() <= rows[1].items()
    image = rows[2]  # the image's fields, under its tag
    assert image["samples/input_then_group/_type"] == "image-file" and image["iteration"] == 1
    (png,) = (tmp_path / "wandb").glob(f"offline-run-*/files/{image['samples/input_then_group/path']}")
    expected = group_grid(TARGETS, SAMPLES).mul(255).round().to(torch.uint8)  # [C, H, W]
    read = torch.from_numpy(np.array(Image.open(io.BytesIO(png.read_bytes())).convert("RGB")))
    assert torch.equal(read.permute(2, 0, 1), expected)


@pytest.mark.slow  # wandb runs its service in a process of its own
def test_logger_multi_writes_tensorboard_and_wandb(tmp_path, offline_wandb):
    logger = instantiate(compose_config(["logger=multi", "logger.loggers.wandb.project=rlar-test"]).logger)
    logger.open(tmp_path)
    logger.scalars({"reward/mean": 0.75}, 1)
    logger.close()
    assert [e.value for e in tb_events(tmp_path / "tensorboard").Scalars("reward/mean")] == [0.75]
    assert {"reward/mean": 0.75, "iteration": 1}.items() <= wandb_logged(tmp_path)[0].items()


def test_a_failed_tensorboard_write_turns_the_logger_off_and_the_run_goes_on(tmp_path, monkeypatch, caplog):
    logger = TensorBoardLogger()
    logger.open(tmp_path)
    logger.scalars({"reward/mean": 1.0}, 0)
    full = OSError(errno.ENOSPC, "No space left on device")
    monkeypatch.setattr(logger._writer, "add_scalar", lambda *args: (_ for _ in ()).throw(full))
    with caplog.at_level("WARNING"):
        logger.scalars({"reward/mean": 2.0}, 1)  # as TensorBoard re-raises its background writer's failure
    assert "TensorBoard logging under tensorboard failed" in caplog.text and "No space left" in caplog.text
    logger.scalars({"reward/mean": 3.0}, 2)  # off: nothing written, nothing raised
    logger.groups("samples", torch.zeros(1, 1, 4, 4), torch.zeros(2, 1, 4, 4), 2)
    logger.close()
