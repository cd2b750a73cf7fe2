"""rlar's Inception metrics as ADM's evaluator (openai/guided-diffusion evaluations/evaluator.py) computes them: IS
over consecutive splits of 5,000 samples, FID against a reference batch's stored ``mu`` and ``sigma``, a reference
read before any sampling, and ``--make-reference``'s fixed random subset of a split. The policy, the sampler and
the Inception network are stand-ins."""

import json
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from omegaconf import OmegaConf
from scipy import linalg

import rlar.eval.inception_eval as inception_eval
from rlar.config.store import compose_config
from rlar.config.validate import ConfigError, check_config
from rlar.eval import cli
from rlar.eval.image_arrays import split_uint8, to_uint8_hwc
from rlar.eval.inception_metrics import inception_metrics


def adm_inception_score(logits: np.ndarray, split_size: int = 5000) -> tuple[float, float]:
    """ADM's ``compute_inception_score`` (in float64, on the softmax of ``logits [N, C]``), and the std of its split
    scores."""
    preds = np.exp(logits - logits.max(1, keepdims=True))
    preds /= preds.sum(1, keepdims=True)
    scores = []
    for i in range(0, len(preds), split_size):
        part = preds[i : i + split_size]
        kl = part * (np.log(part) - np.log(np.expand_dims(np.mean(part, 0), 0)))
        scores.append(np.exp(np.mean(np.sum(kl, 1))))
    return float(np.mean(scores)), float(np.std(scores))


def adm_fid(features: np.ndarray, mu: np.ndarray, sigma: np.ndarray) -> float:
    """ADM's ``FIDStatistics.frechet_distance`` between the fit of ``features [N, F]`` and ``(mu, sigma)``."""
    mu1, sigma1 = features.mean(0), np.cov(features, rowvar=False)
    covmean = linalg.sqrtm(sigma1.dot(sigma)).real
    return float((mu1 - mu).dot(mu1 - mu) + np.trace(sigma1) + np.trace(sigma) - 2 * np.trace(covmean))


@pytest.mark.parametrize("n", [4000, 10_000, 15_000])  # 1 split; 2 and 3 of 5,000 (ADM's 50,000: 10)
def test_inception_score_takes_adm_splits_of_5000_in_order(n):
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(n, 100, generator=g)  # [n, 100]
    logits[: n // 2] += 12 * torch.nn.functional.one_hot(torch.arange(n // 2) % 40, 100)  # confident first half
    expected_mean, expected_std = adm_inception_score(logits.double().numpy())
    metrics = inception_metrics(torch.randn(n, 3, generator=g), logits, torch.randn(8, 3, generator=g))
    assert (metrics["is"], metrics["is_std"]) == pytest.approx((expected_mean, expected_std), rel=1e-9)


def pool_of(images: np.ndarray) -> torch.Tensor:
    """The stand-in network's pool features ``[n, 6]``: the RGB values of each image's first two pixels."""
    return torch.from_numpy(images).flatten(1)[:, :6].double() / 255


def logits_of(images: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(images).flatten(1)[:, 6:16].double() / 64  # [n, 10]


@pytest.fixture
def stand_ins(monkeypatch, tmp_path):
    """Stand-in models, sampler (random RGB images) and Inception network (:func:`pool_of`, :func:`logits_of`), in
    ``tmp_path`` as the working folder; returns the sampler's calls."""
    monkeypatch.chdir(tmp_path)
    Path("last.pt").write_bytes(b"")
    Path("inception.pth").write_bytes(b"")
    images = torch.rand(24, 1, 8, 8, generator=torch.Generator().manual_seed(0)) * 2 - 1  # [24, 1, 8, 8]
    data = SimpleNamespace(num_classes=10, eval_labels=torch.zeros(24), eval_images_of=lambda items: images[items])
    monkeypatch.setattr(cli, "build_models", lambda cfg, device, run_dir: (data, None, SimpleNamespace(block_size=4)))
    sampled = []

    def generate(policy, tokenizer, labels, *rest):
        sampled.append(len(labels))
        return to_uint8_hwc(torch.rand(len(labels), 3, 8, 8, generator=torch.Generator().manual_seed(1)) * 2 - 1)

    monkeypatch.setattr(cli, "generate_uint8", generate)
    monkeypatch.setattr(cli, "InceptionFeatures", lambda *args: lambda x: (pool_of(x), logits_of(x)))
    monkeypatch.setattr(inception_eval, "InceptionFeatures", lambda *args: lambda x: (pool_of(x), logits_of(x)))
    return sampled


@pytest.fixture
def six_wide(monkeypatch):
    """The stand-in network's pool width (:func:`pool_of`) as the one a reference batch's ``mu`` and ``sigma`` fit."""
    monkeypatch.setattr(cli, "POOL_WIDTH", 6)
    monkeypatch.setattr(inception_eval, "POOL_WIDTH", 6)


def score(reference: str, out: str) -> dict:
    return cli.run_command(["policy.checkpoint=last.pt", "--num-samples", "12", "--inception-weights",
                            "inception.pth", "--reference", reference, "--out", out])


def test_fid_uses_a_reference_batchs_mu_and_sigma_and_the_other_metrics_its_images(stand_ins, six_wide):
    arr_0 = to_uint8_hwc(torch.rand(10, 3, 8, 8, generator=torch.Generator().manual_seed(2)) * 2 - 1)
    mu, sigma = np.full(6, 0.9), np.diag(np.linspace(0.01, 0.06, 6))  # far from arr_0's features (mean ~0.5)
    np.savez("adm.npz", arr_0=arr_0, mu=mu, sigma=sigma)
    np.savez("plain.npz", arr_0=arr_0)
    record = score("adm.npz", "with_fit")
    with np.load("with_fit/samples.npz") as archive:
        samples = archive["arr_0"]
    pool = pool_of(samples).numpy()  # [12, 6]

    assert record["fid"] == pytest.approx(adm_fid(pool, mu, sigma), rel=1e-6)
    assert record["fid_reference"] == "mu/sigma of adm.npz" and record["num_reference"] == 10
    of_images = inception_metrics(pool_of(samples), logits_of(samples), pool_of(arr_0))
    for name in ("precision", "recall", "density", "coverage"):  # of arr_0's features
        assert record[name] == pytest.approx(of_images[name])
    assert json.loads(Path("with_fit/metrics.json").read_text())["fid_reference"] == "mu/sigma of adm.npz"

    plain = score("plain.npz", "without_fit")
    reference_pool = pool_of(arr_0).numpy()
    assert plain["fid"] == pytest.approx(adm_fid(pool, reference_pool.mean(0), np.cov(reference_pool, rowvar=False)),
                                         rel=1e-6)
    assert plain["fid"] < record["fid"] / 2 and plain["fid_reference"] == "features of 10 images"


def test_the_training_evaluation_compares_with_the_reference_batchs_mu_and_sigma(stand_ins, six_wide):
    mu, sigma = np.full(6, 0.9), np.eye(6) / 50
    np.savez("adm.npz", arr_0=np.zeros((4, 8, 8, 3), np.uint8), mu=mu, sigma=sigma)
    config = OmegaConf.create({"weights": "inception.pth", "reference": "adm.npz", "num_samples": 4})
    built = inception_eval.build_inception_eval(SimpleNamespace(num_classes=2), config, None, 4, "cpu")
    assert torch.equal(built.reference_fit[0], torch.from_numpy(mu))
    assert torch.equal(built.reference_fit[1], torch.from_numpy(sigma))


@pytest.mark.parametrize("arrays,message", [
    (None, r"rlar-eval: reference 'ref.npz' does not exist"),  # no file
    ({"images": np.zeros((4, 8, 8, 3), np.uint8)}, r"no 'arr_0' array"),
    ({"arr_0": np.zeros((4, 8, 8, 3), np.uint8), "mu": np.zeros(6)}, r"both 'mu' and 'sigma'"),
    ({"arr_0": np.zeros((4, 8, 8, 3), np.uint8), "mu": np.zeros(6), "sigma": np.eye(5)}, r"expected mu \[F\]"),
    # a reference FID cannot compare with: a fit of other features than Inception's pool, or 1 image
    ({"arr_0": np.zeros((4, 8, 8, 3), np.uint8), "mu": np.zeros(64), "sigma": np.eye(64)},
     r"ref.npz: mu \(64,\) and sigma \(64, 64\) fit 64 features.*\[2048\] and \[2048, 2048\]"),
    ({"arr_0": np.zeros((1, 8, 8, 3), np.uint8)}, r"--reference ref.npz holds 1 image\(s\).*needs at least 2"),
    ("cut short", r"rlar-eval: ref.npz: not an .npz of arrays \(File is not a zip file\)"),  # a download cut short
])
def test_a_bad_reference_ends_the_command_in_one_line_before_the_models_are_built(stand_ins, monkeypatch, arrays,
                                                                                   message):
    if arrays == "cut short":
        np.savez("whole.npz", arr_0=np.zeros((4, 8, 8, 3), np.uint8))
        Path("ref.npz").write_bytes(Path("whole.npz").read_bytes()[:500])
    elif arrays is not None:
        np.savez("ref.npz", **arrays)
    monkeypatch.setattr(cli, "build_models", None)  # never built
    with pytest.raises(SystemExit, match=message):
        score("ref.npz", "out")
    assert stand_ins == [] and not Path("out").exists()


@pytest.mark.parametrize("arrays,message", [
    ({"arr_0": np.zeros((4, 8, 8, 3), np.uint8), "mu": np.zeros(64), "sigma": np.eye(64)},
     r"mu \(64,\) and sigma \(64, 64\) fit 64 features.*\[2048\]"),
    ({"arr_0": np.zeros((1, 8, 8, 3), np.uint8)}, r"eval.inception.reference=ref.npz holds 1 image\(s\)"),
], ids=["fit of 64 features", "1 image"])
def test_the_training_evaluation_refuses_such_a_reference_before_loading_the_network(arrays, message, tmp_path,
                                                                                      monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(inception_eval, "InceptionFeatures", None)  # never loaded
    np.savez("ref.npz", **arrays)
    config = OmegaConf.create({"weights": "inception.pth", "reference": "ref.npz", "num_samples": 4})
    with pytest.raises(ValueError, match=message):
        inception_eval.build_inception_eval(SimpleNamespace(num_classes=2), config, None, 4, "cpu")


@pytest.mark.parametrize("arrays,message", [
    ({"arr_0": np.zeros((4, 8, 8, 3), np.uint8), "mu": np.zeros(64), "sigma": np.eye(64)},
     r"mu \(64,\) and sigma \(64, 64\) fit 64 features.*\[2048\]"),
    ({"arr_0": np.zeros((1, 8, 8, 3), np.uint8)}, r"eval.inception.reference=ref.npz holds 1 image\(s\)"),
    ({"arr_0": np.zeros((4, 8, 8), np.uint8)}, r"ref.npz: expected uint8 images \[N, H, W, 3\], got uint8 \(4, 8, 8\)"),
    ({"arr_0": np.zeros((4, 8, 8, 3), np.uint8), "mu": np.zeros(2048)}, "has both 'mu' and 'sigma'"),
], ids=["fit of 64 features", "1 image", "no channels", "mu alone"])
def test_a_training_config_with_such_a_reference_is_refused_from_its_headers(arrays, message, tmp_path, monkeypatch):
    """Refused by check_config, before the tokenizer and the prior are built, without reading the arrays."""
    monkeypatch.chdir(tmp_path)
    Path("inception.pth").write_bytes(b"")
    np.savez("ref.npz", **arrays)
    monkeypatch.setattr(np, "load", None)  # the arrays are never read
    cfg = compose_config(["eval.inception.enabled=true", "eval.inception.weights=inception.pth",
                          "eval.inception.reference=ref.npz"])
    with pytest.raises(ConfigError, match=message):
        check_config(cfg)


def test_a_training_config_with_an_adm_reference_batch_passes_from_its_headers(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    Path("inception.pth").write_bytes(b"")
    np.savez("good.npz", arr_0=np.zeros((4, 8, 8, 3), np.uint8), mu=np.zeros(2048), sigma=np.eye(2048))
    monkeypatch.setattr(np, "load", None)  # the arrays are never read
    check_config(compose_config(["eval.inception.enabled=true", "eval.inception.weights=inception.pth",
                                 "eval.inception.reference=good.npz"]))


@pytest.mark.parametrize("split", ["eval", "train"])
def test_a_reference_of_a_split_listed_class_by_class_holds_every_class(split):
    images = torch.linspace(-1, 1, 20).view(20, 1, 1, 1).expand(20, 3, 2, 2)  # [20, 3, 2, 2]: image i is grey i
    labels = torch.arange(20) // 5  # 4 classes x 5 images, class by class
    data = SimpleNamespace(eval_labels=labels, eval_images_of=lambda items: images[items], train_labels=labels,
                           train_batches=lambda index_batches: (images[idx] for idx in index_batches))
    grey = {int(v): i for i, v in enumerate(to_uint8_hwc(images)[:, 0, 0, 0])}  # grey level -> position

    read = split_uint8(data, split, 8)  # [8, 2, 2, 3]
    positions = [grey[int(v)] for v in read[:, 0, 0, 0]]
    assert len(set(positions)) == 8 and positions == sorted(positions)  # distinct, in split order
    assert set(labels[positions].tolist()) == {0, 1, 2, 3}  # the first 8 would be classes 0 and 1 only
    assert np.array_equal(split_uint8(data, split, 8), read)  # a fixed subset
    assert np.array_equal(split_uint8(data, split, 20), to_uint8_hwc(images))  # the whole split, in order
