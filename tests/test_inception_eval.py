"""Inception FID / IS / precision / recall (rlar/eval/inception*.py) against the libraries' own computations, the
ADM .npz layout, and the missing-weights errors. The Inception weights are random (tests/conftest.py)."""

import pickle

import numpy as np
import pytest
import torch
from PIL import Image
from sklearn.datasets import load_digits
from torchmetrics.image.fid import FrechetInceptionDistance, NoTrainInceptionV3
from torchmetrics.image.inception import InceptionScore

from rlar.config.store import compose_config
from rlar.config.validate import ConfigError, check_config
from rlar.eval.cli import run_command
from rlar.eval.generate import class_balanced_labels, generate_images
from rlar.eval.image_arrays import read_images, to_uint8_hwc, write_grid, write_npz
from rlar.eval.inception import WEIGHTS_NAME, InceptionFeatures
from rlar.eval.inception_eval import InceptionEval
from rlar.eval.inception_metrics import inception_metrics


def digit_images(start: int, n: int) -> np.ndarray:
    """uint8 [n, 8, 8, 3] of scikit-learn's digits."""
    pixels = torch.from_numpy(load_digits().images[start:start + n]).float()[:, None] / 8 - 1  # [n, 1, 8, 8]
    return to_uint8_hwc(pixels)


@pytest.fixture(scope="module")
def features(inception_weights):
    return InceptionFeatures(inception_weights, batch_size=4)


@pytest.fixture(scope="module")
def digits(features):
    """Two sets of 4 different digits, uint8 [4, 8, 8, 3], and their Inception features ``(pool, logits)``."""
    samples, reference = digit_images(0, 4), digit_images(100, 4)
    return samples, reference, features(samples), features(reference)


@pytest.mark.slow  # Inception v3 forward passes over hundreds of images (about 10 s)
@pytest.mark.filterwarnings("ignore:Metric `InceptionScore` will save", "ignore:std\\(\\)")
def test_fid_and_is_match_torchmetrics_on_the_same_images(digits, inception_weights):
    samples, reference, (pool, logits), (reference_pool, _) = digits
    ours = inception_metrics(pool, logits, reference_pool)  # 4 samples: one split, as torchmetrics splits=1

    # torchmetrics, with torch-fidelity's resize (antialias=False) and the same weights file
    fid = FrechetInceptionDistance(feature_extractor_weights_path=str(inception_weights), antialias=False)
    fid.update(torch.from_numpy(samples).permute(0, 3, 1, 2), real=False)
    fid.update(torch.from_numpy(reference).permute(0, 3, 1, 2), real=True)
    net = NoTrainInceptionV3("inception-v3-compat", ["logits_unbiased"], str(inception_weights), antialias=False)
    inception_score = InceptionScore(feature=net, splits=1)
    inception_score.update(torch.from_numpy(samples).permute(0, 3, 1, 2))

    assert ours["fid"] > 1.0  # different images: a distance the comparison can see
    assert ours["fid"] == pytest.approx(float(fid.compute()), rel=1e-4)
    assert ours["is"] > 1.0 + 1e-4
    assert ours["is"] == pytest.approx(float(inception_score.compute()[0]), rel=1e-4)


@pytest.mark.slow  # Inception v3 over the held-out digits twice (about 9 s)
def test_identical_sets_have_zero_fid_and_full_precision_and_recall(digits):
    """Zero exactly, where the libraries' eigenvalues of C1 C2 (2048 x 2048, rank 3) leave an error."""
    _, _, (pool, logits), _ = digits
    metrics = inception_metrics(pool, logits, pool, coverage_neighbours=2)  # 4 images: density needs more than k
    assert metrics["fid"] == pytest.approx(0.0, abs=1e-6)
    assert metrics["precision"] == metrics["recall"] == metrics["coverage"] == 1.0


def brute_force_precision_recall(samples: torch.Tensor, reference: torch.Tensor, k: int) -> tuple[float, float]:
    """Improved precision and recall, one point at a time: x is in a set's manifold if it lies within the distance
    of some member of the set to that member's k-th nearest other member."""
    def radius(points, i):
        return sorted(float((points[i] - points[j]).norm()) for j in range(len(points)) if j != i)[k - 1]

    def covered(x, points):
        return any(float((x - points[j]).norm()) <= radius(points, j) for j in range(len(points)))

    precision = sum(covered(x, reference) for x in samples) / len(samples)
    recall = sum(covered(r, samples) for r in reference) / len(reference)
    return precision, recall


def test_precision_recall_match_brute_force():
    g = torch.Generator().manual_seed(0)
    reference = torch.randn(25, 4, generator=g)
    samples = torch.cat([torch.randn(15, 4, generator=g) * 0.5, torch.randn(15, 4, generator=g) + 2.5])  # [30, 4]
    metrics = inception_metrics(samples, torch.randn(30, 10, generator=g), reference, neighbours=3)
    precision, recall = brute_force_precision_recall(samples, reference, k=3)
    assert 0 < precision < 1 and 0 < recall < 1
    assert metrics["precision"] == pytest.approx(precision)
    assert metrics["recall"] == pytest.approx(recall)


def test_npz_is_adm_layout_uint8_rgb(tmp_path):
    gray = torch.tensor([-1.0, 0.0, 1.0, 0.5]).view(1, 1, 2, 2).repeat(3, 1, 1, 1)  # [3, 1, 2, 2] in [-1, 1]
    path = write_npz(tmp_path / "samples.npz", to_uint8_hwc(gray))
    with np.load(path) as archive:
        assert list(archive.keys()) == ["arr_0"]
        arr = archive["arr_0"]
    assert arr.dtype == np.uint8 and arr.shape == (3, 2, 2, 3)
    assert (arr[..., 0] == arr[..., 1]).all() and (arr[..., 0] == arr[..., 2]).all()  # grayscale repeated
    assert arr[0, :, :, 0].tolist() == [[0, 128], [255, 191]]  # (x + 1) * 127.5, rounded
    assert (read_images(path) == arr).all()

    rgb = torch.rand(2, 3, 4, 4) * 2 - 1
    assert (to_uint8_hwc(rgb) == ((rgb + 1) * 127.5).round().byte().permute(0, 2, 3, 1).numpy()).all()


def test_image_folder_and_grid(tmp_path):
    images = digit_images(0, 4)
    for i, image in enumerate(images):
        (tmp_path / "refs" / f"class{i % 2}").mkdir(parents=True, exist_ok=True)
        Image.fromarray(image).save(tmp_path / "refs" / f"class{i % 2}" / f"{i}.png")
    read = read_images(tmp_path / "refs")
    assert read.shape == images.shape and sorted(map(bytes, read)) == sorted(map(bytes, images))
    with Image.open(write_grid(tmp_path / "grid.png", images)) as grid:
        assert grid.size == (2 * 8 + 3 * 2, 2 * 8 + 3 * 2)  # 2 x 2 images of 8 px, 2 px padding


def test_missing_weights_say_where_to_put_them(tmp_path):
    missing = tmp_path / "nowhere" / WEIGHTS_NAME
    with pytest.raises(FileNotFoundError) as error:
        InceptionFeatures(missing)
    for words in (str(missing), "pt_inception-2015-12-05-6726825d.pth", "pytorch-fid", "torch-fidelity",
                  "--inception-weights", "eval.inception.weights", "docs/evaluation.md"):
        assert words in str(error.value)

    cfg = compose_config([f"cache_dir={tmp_path}", "eval.inception.enabled=true"])
    with pytest.raises(ConfigError, match=str(tmp_path / "inception" / WEIGHTS_NAME)):
        check_config(cfg)
    with pytest.raises(SystemExit, match="Inception weights not found at"):  # before anything is sampled
        run_command([f"cache_dir={tmp_path}", "--inception-weights", str(missing)])
    with pytest.raises(SystemExit, match="is not a run directory"):
        run_command([str(tmp_path)])


class NotATensor:
    pass


def test_weights_file_is_never_unpickled(tmp_path):
    """torch-fidelity itself loads with weights_only=False; rlar forces tensors-only loading around it."""
    path = tmp_path / "pickled.pth"
    torch.save({"fc.weight": NotATensor()}, path)
    with pytest.raises(pickle.UnpicklingError, match="Weights only load failed"):
        InceptionFeatures(path)


@pytest.mark.slow  # samples a policy and runs Inception v3 (about 6 s)
def test_inception_eval_scores_class_balanced_samples(features, digits, gpt):
    class CodesAsImages:  # a stand-in tokenizer: the 12 codes of a sample as a 3 x 4 gray image
        def decode_code(self, codes):
            return codes.float().view(len(codes), 1, 3, 4) / 15.5 - 1

    _, reference, _, (reference_pool, _) = digits
    sampling = {"temperature": 1.0, "cfg_scale": 1.0}
    inception_eval = InceptionEval(features, reference, num_samples=4, num_classes=5)
    assert torch.equal(inception_eval.reference_pool, reference_pool)
    scored = inception_eval(gpt, CodesAsImages(), sampling, batch_size=3, seed=3, device="cpu")

    labels = class_balanced_labels(4, 5)
    assert labels.tolist() == [0, 1, 2, 3] and class_balanced_labels(7, 3).tolist() == [0, 1, 2, 0, 1, 2, 0]
    images = generate_images(gpt, CodesAsImages(), labels, sampling, 3, torch.Generator().manual_seed(3), "cpu")
    pool, logits = features(to_uint8_hwc(images))
    expected = inception_metrics(pool, logits, reference_pool)
    # 4 reference images: density and coverage (k = 5) are NaN on both sides
    assert scored == pytest.approx({f"eval/inception_{k}": expected[k]
                                    for k in ("fid", "is", "precision", "recall", "density", "coverage")}, nan_ok=True)
