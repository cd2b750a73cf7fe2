"""The judge at the scale of data on disk: its classifier reads only the images its batches draw, eval/memorization
compares with a bounded subset of the train split, its distances are computed a bounded block at a time, a loaded
classifier's held-out accuracy is its build's, and under torchrun rank 0 alone computes its metrics and reads the
held-out and train images they compare with."""

import json
import pickle
from pathlib import Path

import pytest
import torch
from omegaconf import OmegaConf
from PIL import Image
from torchrun import torchrun_source

import rlar.data.on_access
from rlar.data.batches import ImageData, random_rows
from rlar.data.digits import DigitsData
from rlar.data.image_folder import ImageFolderData
from rlar.eval import evaluate
from rlar.eval.model import manifold, memorization, scorer
from rlar.eval.model.build import build_eval_classifier
from rlar.eval.model.manifold import class_spreads, density_coverage, knn_radii, precision_recall
from rlar.eval.model.memorization import copy_threshold, nearest_distances
from rlar.eval.model.scorer import build_eval_model, features_of, train_features
from rlar.eval.model.train import accuracy
from rlar.runtime import distributed

BRIEF = {"train": {"steps": 4, "batch_size": 8}}  # a classifier that learns nothing, trained in a moment


@pytest.fixture(scope="module")
def folder(digit_pixels, tmp_path_factory):
    """60 digits as ``root/digit<k>/<i>.png``."""
    root = tmp_path_factory.mktemp("judge_folder")
    pixels, labels = digit_pixels(60)
    for i, (image, label) in enumerate(zip(pixels, labels, strict=True)):
        (root / f"digit{label}").mkdir(exist_ok=True)
        Image.fromarray(image).save(root / f"digit{label}" / f"{i:03d}.png")
    return str(root)


class InMemory(ImageData):
    """``data``'s splits held in memory as float32: the classifier's reference."""

    def __init__(self, data: ImageData, train_images: torch.Tensor, eval_images: torch.Tensor):
        self.train_images, self.train_labels = train_images, data.train_labels
        self.eval_images, self.eval_labels = eval_images, data.eval_labels
        self.channels, self.num_classes = data.channels, data.num_classes

    def fingerprint(self) -> dict:
        return {"in memory": True}


def refuse_whole_splits(monkeypatch) -> None:
    """Reading ``train_images`` or ``eval_images`` of an image folder (a whole split at once) fails the test."""
    for split in ("train_images", "eval_images"):
        monkeypatch.setattr(ImageFolderData, split, property(lambda self, s=split: pytest.fail(f"read {s} whole")))


@pytest.mark.parametrize("num_workers", [0, 2])
def test_a_classifier_of_data_on_disk_reads_only_the_images_its_batches_draw(folder, num_workers, monkeypatch,
                                                                             tmp_path):
    data = ImageFolderData(root=folder, image_size=32, channels=1, num_workers=num_workers)
    reference = build_eval_classifier(InMemory(data, data.train_images, data.eval_images), tmp_path / "a", BRIEF)
    decoded = []
    load_image = rlar.data.on_access.load_image
    monkeypatch.setattr(rlar.data.on_access, "load_image", lambda *a: decoded.append(1) or load_image(*a))
    refuse_whole_splits(monkeypatch)
    judge = build_eval_classifier(data, tmp_path / "b", BRIEF)
    if num_workers == 0:  # decoded in this process, where the count is kept
        assert len(decoded) == 4 * 8  # steps x batch_size, of a train split of 54
    assert all(torch.equal(judge.state_dict()[k], v) for k, v in reference.state_dict().items())  # the same draws
    assert judge.metrics == reference.metrics


def test_random_rows_are_all_of_a_small_split_and_a_fixed_sorted_subset_of_a_large_one():
    for limit in (None, 10, 11):
        assert torch.equal(random_rows(10, limit, memorization.TRAIN_SEED), torch.arange(10))
    rows = random_rows(1000, 100, memorization.TRAIN_SEED)
    assert len(rows) == 100 == len(rows.unique()) and torch.equal(rows, rows.sort().values) and rows.max() < 1000
    assert torch.equal(rows, random_rows(1000, 100, memorization.TRAIN_SEED))
    assert not torch.equal(rows, torch.arange(100))


def test_memorization_reads_a_bounded_subset_of_the_train_split(monkeypatch, tmp_path):
    data = DigitsData()
    cfg = OmegaConf.create({"max_items": 50, "classifier_model": BRIEF})
    read = []
    train_batches = data.train_batches
    monkeypatch.setattr(data, "train_batches", lambda batches: read.extend(batches) or train_batches(batches))
    judge = build_eval_model(data, cfg, str(tmp_path), "cpu", train_images=100)
    rows = random_rows(len(data.train_labels), 100, memorization.TRAIN_SEED)
    assert len(read) == 4 + 1 and torch.equal(read[-1], rows)  # the classifier's 4 batches, then the subset
    subset = train_features(judge.classifier, data, "cpu")[rows]  # [100, F]
    assert torch.allclose(judge.train_features, subset, atol=1e-6)
    assert judge.copy_threshold == pytest.approx(copy_threshold(judge.real_features, subset), rel=1e-6)
    whole = build_eval_model(data, cfg, str(tmp_path), "cpu")  # the default: all of the digits' 1,438
    assert len(whole.train_features) == len(data.train_labels)


def test_the_held_out_images_are_converted_to_floats_a_chunk_at_a_time(folder, monkeypatch, tmp_path):
    data = ImageFolderData(root=folder, image_size=32, channels=1)  # 6 held-out images
    cfg = OmegaConf.create({"max_items": None, "classifier_model": BRIEF})
    classifier = build_eval_classifier(data, tmp_path, BRIEF)
    expected = features_of(classifier, [data.eval_images], "cpu")  # [6, F]
    sizes = []
    eval_images_of = data.eval_images_of
    monkeypatch.setattr(data, "eval_images_of", lambda items: sizes.append(len(range(6)[items]) if isinstance(
        items, slice) else len(items)) or eval_images_of(items))
    monkeypatch.setattr(scorer, "CHUNK_SIZE", 4)
    refuse_whole_splits(monkeypatch)
    judge = build_eval_model(data, cfg, str(tmp_path), "cpu")
    assert sizes == [4, 2]  # the judge's reference (the classifier's held-out accuracy was measured at its build)
    assert torch.allclose(judge.real_features, expected, atol=1e-6)


def test_a_judge_built_for_a_rank_that_computes_no_metrics_reads_no_image_and_describes_alike(folder, monkeypatch,
                                                                                              tmp_path):
    data = ImageFolderData(root=folder, image_size=32, channels=1)
    cfg = OmegaConf.create({"max_items": None, "classifier_model": BRIEF})
    whole = build_eval_model(data, cfg, str(tmp_path), "cpu")
    images, labels = next(iter(data.train_batches([torch.arange(5)]))), torch.arange(5) % 2  # [5, 1, 32, 32], [5]
    read = []
    for name in ("eval_images_of", "train_batches"):
        monkeypatch.setattr(data, name, lambda *a, name=name: read.append(name))
    alone = build_eval_model(data, cfg, str(tmp_path), "cpu", reference=False)  # the cached classifier: no training
    assert read == [] and not alone.has_reference
    features, hits = alone.describe(images, labels)
    assert torch.equal(features, whole.describe(images, labels)[0]) and torch.equal(hits, whole.describe(images,
                                                                                                      labels)[1])
    with pytest.raises(RuntimeError, match="without the held-out images"):
        alone.metrics(features, hits, labels)


def test_a_loaded_classifier_gives_the_held_out_accuracy_its_build_measured_and_measures_it_without_that_record(
        folder, tmp_path):
    data = ImageFolderData(root=folder, image_size=32, channels=1)
    built = build_eval_classifier(data, tmp_path, BRIEF)
    record = Path(built.source).with_suffix(".json")
    recorded = json.loads(record.read_text())["metrics"]["eval_accuracy"]
    assert built.metrics["eval_accuracy"] == recorded == accuracy(built, data)
    record.write_text(json.dumps({"spec": {}, "metrics": {"eval_accuracy": 0.125}}))
    assert build_eval_classifier(data, tmp_path, BRIEF).metrics["eval_accuracy"] == 0.125  # read, not measured
    record.unlink()  # a build stopped between its two writes
    assert build_eval_classifier(data, tmp_path, BRIEF).metrics["eval_accuracy"] == recorded  # measured again


def points(n: int, seed: int, dims: int = 3) -> torch.Tensor:
    return torch.randn(n, dims, generator=torch.Generator().manual_seed(seed)).double()  # [n, dims]


def judge_computations() -> dict:
    real, fake, labels = points(40, 0), 0.7 * points(30, 1) + 0.5, torch.arange(30) % 2
    return {"radii": knn_radii(real, 3), "nearest": nearest_distances(fake, real),
            "precision_recall": precision_recall(real, fake), "density_coverage": density_coverage(real, fake),
            "spreads": class_spreads(fake, labels)}


def test_distances_a_bounded_block_at_a_time_give_the_unblocked_results(monkeypatch):
    whole = judge_computations()  # the matrices of these sizes in one block each
    largest = []
    cdist = torch.cdist
    monkeypatch.setattr(torch, "cdist", lambda a, b: largest.append(len(a) * len(b)) or cdist(a, b))
    monkeypatch.setattr(manifold, "ROWS", 7)
    monkeypatch.setattr(manifold, "COLUMNS", 4)
    blocked = judge_computations()
    assert max(largest) <= 7 * 4
    for name in ("radii", "nearest"):
        assert torch.allclose(blocked[name], whole[name], rtol=1e-12, atol=0)
    for name in ("precision_recall", "density_coverage", "spreads"):
        assert blocked[name] == pytest.approx(whole[name], rel=1e-12)


def test_only_rank_0_computes_the_judges_metrics(monkeypatch):
    class Judge:
        calls = 0

        def metrics(self, features, hits, labels, per_item):
            Judge.calls += 1
            return {"eval/fd": float(len(features))}

    sent = []
    # (metrics, error): what rank 0 sends; the stand-in delivers rank 0's metrics, 5
    monkeypatch.setattr(distributed, "broadcast_object", lambda obj: sent.append(obj) or ({"eval/fd": 5.0}, None))
    monkeypatch.setattr(distributed, "rank", lambda: 1)
    rows = torch.zeros(4, 2), torch.ones(4, dtype=torch.bool), torch.zeros(4, dtype=torch.long)
    assert evaluate.judged(Judge(), *rows, 1) == {"eval/fd": 5.0} and Judge.calls == 0 and sent == [(None, None)]
    monkeypatch.setattr(distributed, "rank", lambda: 0)
    assert evaluate.judged(Judge(), *rows, 1) == {"eval/fd": 5.0} and Judge.calls == 1
    assert sent[-1] == ({"eval/fd": 4.0}, None)


class JudgeError(Exception):
    """An error that pickle cannot rebuild from its args (another rank could not receive it as an object)."""

    def __init__(self, count: int, per_item: int):
        super().__init__(f"{count} samples are not a multiple of per_item={per_item}")


class FailingJudge:
    def metrics(self, features, hits, labels, per_item):
        raise JudgeError(3, per_item)


def test_an_error_of_rank_0s_judge_is_raised_on_every_rank(monkeypatch):
    sent = []  # what rank 0 broadcast, as another rank unpickles it
    monkeypatch.setattr(distributed, "is_distributed", lambda: True)
    monkeypatch.setattr(distributed, "rank", lambda: 0)
    monkeypatch.setattr(distributed, "broadcast_object", lambda obj: sent.append(pickle.loads(pickle.dumps(obj)))
                        or sent[0])
    rows = torch.zeros(3, 2), torch.ones(3, dtype=torch.bool), torch.zeros(3, dtype=torch.long)
    message = r"failed on rank 0: JudgeError: 3 samples are not a multiple of per_item=2"
    with pytest.raises(distributed.RaisedOnEveryRank, match=message):
        evaluate.judged(FailingJudge(), *rows, 2)  # rank 0: sends the error, then raises it
    monkeypatch.setattr(distributed, "rank", lambda: 1)
    with pytest.raises(distributed.RaisedOnEveryRank, match=message):
        evaluate.judged(FailingJudge(), *rows, 2)  # another rank: raises what rank 0 sent, not waiting on it


def test_on_one_process_the_judge_s_error_is_raised_as_it_is():
    rows = torch.zeros(3, 2), torch.ones(3, dtype=torch.bool), torch.zeros(3, dtype=torch.long)
    with pytest.raises(JudgeError, match="not a multiple of per_item=2"):
        evaluate.judged(FailingJudge(), *rows, 2)


JUDGED = """
import sys
import torch
import torch.distributed as dist
from rlar.eval.evaluate import judged


class Judge:
    def metrics(self, features, hits, labels, per_item):
        print(f"rank {dist.get_rank()} computed", flush=True)
        return {"eval/fd": float(features.sum()), "eval/memorization": float("nan")}


dist.init_process_group("gloo")
rows = torch.full((4, 2), 0.5), torch.ones(4, dtype=torch.bool), torch.zeros(4, dtype=torch.long)
print(f"rank {dist.get_rank()}: {judged(Judge(), *rows, 1)}", flush=True)
dist.destroy_process_group()
"""


@pytest.mark.slow
def test_on_two_processes_rank_0_computes_the_judges_metrics_and_both_report_them(tmp_path):
    proc = torchrun_source(JUDGED, tmp_path)
    assert proc.stdout.count("computed") == 1 and "rank 0 computed" in proc.stdout  # (the ranks' lines may interleave)
    for rank in (0, 1):
        assert f"rank {rank}: {{'eval/fd': 4.0, 'eval/memorization': nan}}" in proc.stdout
