"""``rlar-eval``'s options and outputs without sampling a real policy: which weights are recorded and where their
outputs go, what ``--judge`` reads of the other options, a run whose recorded Inception files moved, 16-bit
reference folders, and precision / recall in bounded memory. The policy, the sampler, the judge and the Inception
network are stand-ins."""

import json
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
import torch_fidelity.metric_prc as metric_prc
from omegaconf import OmegaConf
from PIL import Image

from rlar.config.store import compose_config
from rlar.eval import cli
from rlar.eval.evaluate import JUDGE_METRICS
from rlar.eval.image_arrays import read_images, stacked_uint8, to_uint8_hwc, write_npz
from rlar.eval.inception import InceptionFeatures
from rlar.eval.inception_metrics import inception_metrics
from rlar.studies.judged import run_judgement


@pytest.fixture
def stand_ins(monkeypatch, tmp_path):
    """Stand-ins for the models, the sampler, the judge and the Inception network, in ``tmp_path`` as the working
    folder; returns the calls of the judge (``judge_over_seeds``'s config and seeds)."""
    monkeypatch.chdir(tmp_path)
    for checkpoint in ("a/last.pt", "b/last.pt", "other.pt"):  # policy.checkpoint must exist; the stand-in reads none
        Path(checkpoint).parent.mkdir(exist_ok=True)
        Path(checkpoint).write_bytes(b"")
    images = torch.rand(24, 1, 8, 8, generator=torch.Generator().manual_seed(0)) * 2 - 1  # [24, 1, 8, 8]
    data = SimpleNamespace(num_classes=10, eval_labels=torch.zeros(24), eval_images_of=lambda items: images[items])
    monkeypatch.setattr(cli, "build_models", lambda cfg, device, run_dir: (data, None, SimpleNamespace(block_size=4)))
    monkeypatch.setattr(cli, "generate_uint8", lambda policy, tokenizer, labels, *rest: to_uint8_hwc(torch.rand(
        len(labels), 1, 8, 8) * 2 - 1))  # [N, 8, 8, 3]
    monkeypatch.setattr(cli, "InceptionFeatures", lambda *args: lambda x: (torch.rand(len(x), 6),  # pool [n, 6]
                                                                             torch.rand(len(x), 10)))  # logits
    calls = []

    monkeypatch.setattr(cli, "build_eval_model", lambda data, eval_cfg, cache_dir, device: None)

    def judge(cfg, data, tokenizer, policy, eval_model, sampling, seeds, device, autocast, kept=None, identity=None):
        calls.append((cfg, seeds))
        return {f"eval/{m}": {"mean": 1.0, "std": 0.0, "values": [1.0] * len(seeds)} for m in JUDGE_METRICS}

    monkeypatch.setattr(cli, "judge_over_seeds", judge)
    return calls


@pytest.fixture
def weights_file(tmp_path):
    """A file where the Inception weights are expected (the stand-in network reads nothing)."""
    path = tmp_path / "inception.pth"
    path.write_bytes(b"")
    return str(path)


def recorded_run(run: Path, overrides: list[str]) -> Path:
    """A run dir ``run`` whose recorded config is the one ``overrides`` compose, with a checkpoint (empty: the
    stand-in policy reads none)."""
    (run / ".hydra").mkdir(parents=True)
    OmegaConf.save(compose_config(overrides), run / ".hydra" / "config.yaml")
    (run / "checkpoints").mkdir()
    (run / "checkpoints" / "last.pt").write_bytes(b"")
    return run


@pytest.fixture
def moved_run(tmp_path):
    """A run dir recorded with eval.inception on, whose weights file and reference are gone."""
    return recorded_run(tmp_path / "run", ["eval.inception.enabled=true",
                                           f"eval.inception.weights={tmp_path}/gone/inception.pth",
                                           f"eval.inception.reference={tmp_path}/gone/ref.npz"])


def only(pattern: str) -> Path:
    (path,) = Path().glob(pattern)
    return path


def test_two_checkpoints_at_the_same_settings_are_recorded_in_folders_of_their_own(stand_ins, weights_file):
    for name in ("a", "b"):
        cli.run_command([f"policy.checkpoint={name}/last.pt", "--judge", "1"])
        cli.run_command([f"policy.checkpoint={name}/last.pt", "--num-samples", "12",
                         "--inception-weights", weights_file])
    judged = sorted(Path("outputs/eval").glob("*/judge-*/judge.json"))
    scored = sorted(Path("outputs/eval").glob("*/n12-*/metrics.json"))
    assert len(judged) == len(scored) == 2 and judged[0].parent.parent != judged[1].parent.parent
    checkpoints = {str(Path.cwd() / name / "last.pt") for name in "ab"}  # recorded as absolute paths
    for paths in (judged, scored):
        records = [json.loads(path.read_text()) for path in paths]
        assert {r["checkpoint"] for r in records} == checkpoints and all(r["run"] is None for r in records)
        assert all(path.parent.parent.name.startswith("last-") for path in paths)  # <stem>-<hash>/


def test_a_run_dir_keeps_its_outputs_and_records_itself(stand_ins, tmp_path):
    run = recorded_run(tmp_path / "run", [])
    record = cli.run_command([str(run), "--judge", "1"])
    assert record["run"] == str(run.resolve()) and record["checkpoint"] is None
    assert only("run/eval/judge-*/judge.json")
    cli.run_command([str(run), "policy.checkpoint=other.pt", "--judge", "1"])
    record = json.loads(only("run/eval/other-*/judge-*/judge.json").read_text())
    assert record["run"] is None and record["checkpoint"] == str(Path.cwd() / "other.pt")


def test_a_run_that_trained_nothing_is_judged_as_its_prior(stand_ins, tmp_path, monkeypatch):
    run = tmp_path / "prior"
    (run / ".hydra").mkdir(parents=True)
    OmegaConf.save(compose_config(["train.iterations=0"]), run / ".hydra" / "config.yaml")
    (run / "summary.json").write_text(json.dumps({"iterations": 0}))  # no checkpoints/: it saved no weights
    identities, judge = [], cli.judge_over_seeds
    monkeypatch.setattr(cli, "judge_over_seeds", lambda *args: identities.append(args[-1]) or judge(*args))  # identity
    assert cli.run_command([str(run), "--judge", "1"])["metrics"]
    assert [i["weights"] for i in identities] == [[]]  # no weights file: the prior its config builds
    assert run_judgement(run, 1)  # as a study's prior rows are judged (here: the judgement above, read back)


def test_metrics_json_records_the_weights_and_the_reference_as_absolute_paths(stand_ins, tmp_path):
    Path("inception.pth").write_bytes(b"")
    write_npz("ref.npz", np.zeros((5, 8, 8, 3), np.uint8))
    record = cli.run_command(["policy.checkpoint=a/last.pt", "--num-samples", "12", "--inception-weights",
                              "inception.pth", "--reference", "ref.npz", "--batch-size", "5"])
    written = json.loads(only("outputs/eval/*/n12-*/metrics.json").read_text())
    assert written["inception_weights"] == record["inception_weights"] == str(tmp_path / "inception.pth")
    assert written["batch_size"] == 5  # the samples depend on it
    assert written["reference"] == str(tmp_path / "ref.npz") and written["num_reference"] == 5


def test_a_run_whose_inception_files_moved_is_still_evaluated(stand_ins, moved_run, weights_file):
    assert cli.run_command([str(moved_run), "--judge", "1"])["metrics"]  # the judge reads no Inception weights
    record = cli.run_command([str(moved_run), "--num-samples", "12", "--inception-weights", weights_file])
    assert record["inception_weights"] == weights_file and record["num_reference"] == 24
    with pytest.raises(SystemExit, match=f"Inception weights not found at '{moved_run.parent}/gone/inception.pth'"):
        cli.run_command([str(moved_run), "--num-samples", "12"])  # the run's own weights, then none


@pytest.mark.parametrize("args,message", [
    (["--num-samples", "500"], r"--num-samples 500 does not apply to --judge.*eval.samples_per_item=K"),
    (["--reference", "ref.npz"], r"--reference ref.npz does not apply to --judge.*held-out split"),
    (["--labels", "random"], r"--labels random does not apply to --judge, which samples each held-out item's label"),
])
def test_judge_refuses_the_options_of_the_inception_metrics(args, message, monkeypatch):
    monkeypatch.setattr(cli, "run_config", None)  # refused before any config is read
    with pytest.raises(SystemExit, match=message):
        cli.run_command(["--judge", "2", *args])


def test_a_temperature_that_would_overflow_the_logits_is_refused_before_any_config_is_read(monkeypatch):
    monkeypatch.setattr(cli, "run_config", None)
    with pytest.raises(SystemExit, match=r"config error: --temperature must be >= 1e-05 .*top_k=1 samples greedily"):
        cli.run_command(["--judge", "1", "--temperature", "0"])


@pytest.mark.parametrize("args", [["--num-samples", "0"], ["--make-reference", "ref.npz", "--max-images", "0"]])
def test_a_count_below_1_is_refused_before_any_config_is_read(args, monkeypatch):
    monkeypatch.setattr(cli, "run_config", None)
    with pytest.raises(SystemExit, match=f"{args[-2]} takes a count of at least 1, got 0"):
        cli.run_command(args)


def test_one_sample_is_refused_before_any_config_is_read_unless_no_metric_is_asked(stand_ins, monkeypatch):
    assert cli.run_command(["policy.checkpoint=a/last.pt", "--num-samples", "1", "--samples-only", "--out",
                            "one"]) == {}
    assert len(read_images("one/samples.npz")) == 1
    monkeypatch.setattr(cli, "run_config", None)
    with pytest.raises(SystemExit, match=r"--num-samples 1: FID fits a covariance .*needs at least 2; give "
                                         r"--num-samples 2 or more, or --samples-only"):
        cli.run_command(["--num-samples", "1"])


def test_an_unreadable_inception_weights_file_stops_the_command_before_any_sampling(stand_ins, weights_file,
                                                                                      monkeypatch):
    monkeypatch.setattr(cli, "InceptionFeatures", InceptionFeatures)  # the real network, from an empty file
    monkeypatch.setattr(cli, "generate_uint8", None)  # never called
    with pytest.raises(EOFError):
        cli.run_command(["policy.checkpoint=a/last.pt", "--num-samples", "12", "--inception-weights", weights_file])
    assert not Path("outputs").exists()


@pytest.mark.parametrize("mode", [[], ["--samples-only"]])
def test_a_text_conditioned_config_is_refused_in_one_line_before_any_model_is_built(stand_ins, weights_file, mode,
                                                                                    monkeypatch):
    monkeypatch.setattr(cli, "build_models", None)  # never called
    text = ["data.captions=attributes", "text_encoder=embedded"]
    with pytest.raises(SystemExit, match=r"^rlar-eval samples class-conditional policies under class labels; a "
                                         r"text-conditioned run \(text_encoder=.*\) is conditioned on captions"):
        cli.run_command(["policy.checkpoint=a/last.pt", *text, "--inception-weights", weights_file, *mode])


def test_random_labels_come_from_the_sampling_seed_and_get_a_folder_of_their_own(stand_ins, weights_file,
                                                                                monkeypatch):
    seen = []
    generate = cli.generate_uint8
    monkeypatch.setattr(cli, "generate_uint8", lambda policy, tokenizer, labels, *rest: seen.append(labels) or generate(
        policy, tokenizer, labels, *rest))
    args = ["--num-samples", "40", "--inception-weights", weights_file]
    balanced, drawn, again = (cli.run_command([*args, *more]) for more in ([], ["--labels", "random"],
                                                                           ["--labels", "random"]))
    assert seen[0].tolist() == [i % 10 for i in range(40)]  # every class 4 times
    assert torch.equal(seen[1], torch.randint(10, (40,), generator=torch.Generator().manual_seed(1234)))  # eval.seed
    assert torch.equal(seen[2], seen[1]) and seen[1].bincount(minlength=10).tolist() != [4] * 10
    assert (balanced["labels"], drawn["labels"], again["labels"]) == ("balanced", "random", "random")
    assert only("outputs/eval/n40-cfg1-temp1-seed1234-randlabels-*/metrics.json")
    assert len(list(Path("outputs/eval").glob("n40-*/metrics.json"))) == 2  # the same command finds its own


def test_judge_starts_at_the_seed_and_samples_at_the_batch_size_given(stand_ins):
    record = cli.run_command(["--judge", "2", "--seed", "7", "--batch-size", "3"])
    ((cfg, seeds),) = stand_ins
    assert seeds == record["seeds"] == [7, 8] and cfg.eval.batch_size == record["batch_size"] == 3
    assert only("outputs/eval/judge-*-seeds7-8-*/judge.json")


def test_judgements_under_other_settings_get_folders_of_their_own_and_a_rerun_finds_its_own(stand_ins):
    for args in (["--judge", "2"], ["--judge", "2", "--batch-size", "7"], ["--judge", "2", "eval.samples_per_item=2"],
                 ["--judge", "2", "eval.max_items=40"]):
        cli.run_command(args)
    assert len(list(Path("outputs/eval").glob("judge-cfg1-temp1-seeds1234-1235-*/judge.json"))) == 4
    cli.run_command(["--judge", "2", "eval.batch_size=7"])  # the settings of --batch-size 7: its folder
    assert len(list(Path("outputs/eval").glob("judge-*/judge.json"))) == 4
    batch_sizes = {json.loads(p.read_text())["batch_size"] for p in Path("outputs/eval").glob("judge-*/judge.json")}
    assert 7 in batch_sizes and len(batch_sizes) == 2


def test_the_judge_and_the_samples_draw_with_the_rollouts_top_k_and_top_p(stand_ins, monkeypatch):
    seen = []
    judge_over_seeds, generate_uint8 = cli.judge_over_seeds, cli.generate_uint8
    monkeypatch.setattr(cli, "judge_over_seeds", lambda cfg, data, tokenizer, policy, judge, sampling, *rest:
                        seen.append(sampling) or judge_over_seeds(cfg, data, tokenizer, policy, judge, sampling, *rest))
    monkeypatch.setattr(cli, "generate_uint8", lambda policy, tokenizer, labels, sampling, *rest: seen.append(
        sampling) or generate_uint8(policy, tokenizer, labels, sampling, *rest))
    record = cli.run_command(["--judge", "1", "rollout.top_k=5", "rollout.top_p=0.9", "--temperature", "0.7"])
    cli.run_command(["--samples-only", "--num-samples", "4", "rollout.top_k=5", "rollout.top_p=0.9"])
    assert [(s["top_k"], s["top_p"], s["temperature"]) for s in seen] == [(5, 0.9, 0.7), (5, 0.9, 1.0)]
    assert (record["top_k"], record["top_p"]) == (5, 0.9)


def test_samples_at_another_batch_size_get_a_folder_of_their_own(stand_ins):
    for batch_size in ("20", "7", "20"):
        cli.run_command(["--samples-only", "--num-samples", "20", "--batch-size", batch_size])
    assert len(list(Path("outputs/eval").glob("n20-cfg1-temp1-seed1234-*/samples.npz"))) == 2


def test_a_study_reads_the_judgement_where_rlar_eval_writes_it(stand_ins, tmp_path):
    run = recorded_run(tmp_path / "run", [])
    assert run_judgement(run, 2, ["eval.samples_per_item=2"])["eval/fd"]["values"] == [1.0, 1.0]
    ((cfg, seeds),) = stand_ins
    assert cfg.eval.samples_per_item == 2 and seeds == [1234, 1235]
    assert run_judgement(run, 2, ["eval.samples_per_item=2"]) and len(stand_ins) == 1  # found, not judged again
    run_judgement(run, 2)  # other settings: judged in another folder
    assert len(stand_ins) == 2 and len(list(run.glob("eval/judge-*/judge.json"))) == 2


def test_a_16_bit_grayscale_reference_keeps_its_grey_levels(tmp_path):
    ramp = np.linspace(0, 65535, 64).round().astype(np.uint16)[None].repeat(4, 0)  # [4, 64] uint16
    (tmp_path / "refs").mkdir()
    Image.fromarray(ramp).save(tmp_path / "refs" / "ramp.png")  # a 16-bit grayscale PNG
    images = read_images(tmp_path / "refs")  # [1, 4, 64, 3]
    assert images.dtype == np.uint8 and images.shape == (1, 4, 64, 3)
    assert (images == (ramp / 257).round().astype(np.uint8)[None, ..., None]).all()


def test_precision_recall_in_blocks_match_the_full_matrices_without_building_them(monkeypatch):
    g = torch.Generator().manual_seed(0)
    samples = torch.randn(1100, 6, generator=g)  # [N, 6]: more rows than one block, PRC_BATCH
    reference = torch.randn(1050, 6, generator=g) + 0.5  # [M, 6]
    full = metric_prc.calculate_precision_recall_full(samples, reference, 3)

    def refuse(*args):
        raise AssertionError("the full N x N, M x M and M x N distance matrices were built")

    monkeypatch.setattr(metric_prc, "calculate_precision_recall_full", refuse)
    metrics = inception_metrics(samples, torch.randn(1100, 10, generator=g), reference)
    assert 0 < full[0] < 1 and 0 < full[1] < 1
    assert (metrics["precision"], metrics["recall"]) == full


def test_image_size_resizes_the_samples_and_the_default_reference_as_llamagen_does(stand_ins, weights_file,
                                                                                    monkeypatch, caplog):
    images = torch.rand(6, 3, 8, 8, generator=torch.Generator().manual_seed(1)) * 2 - 1  # [6, 3, 8, 8]
    monkeypatch.setattr(cli, "generate_uint8", lambda policy, tokenizer, labels, sampling, batch_size, generator,
                        device, autocast, image_size: stacked_uint8([images[: len(labels)]], len(labels), image_size))
    record = cli.run_command(["--num-samples", "6", "--image-size", "4", "--samples-only"])
    samples = read_images(only("outputs/eval/n6-cfg1-temp1-seed1234-px4-*/samples.npz"))
    bicubic = torch.nn.functional.interpolate(images, size=(4, 4), mode="bicubic").clamp(-1, 1)  # LlamaGen's resize
    assert record == {} and np.array_equal(samples, to_uint8_hwc(bicubic))
    weights = ["--inception-weights", weights_file]
    with caplog.at_level("WARNING"):
        record = cli.run_command(["--num-samples", "6", "--image-size", "4", *weights])  # vs the held-out split
    assert record["image_size"] == 4 and record["num_reference"] == 24 and "px" not in caplog.text  # resized too
    write_npz("ref8.npz", np.zeros((5, 8, 8, 3), np.uint8))
    with caplog.at_level("WARNING"):
        cli.run_command(["--num-samples", "6", "--image-size", "4", "--reference", "ref8.npz", *weights])
    assert "the samples are (4, 4) px and the reference (8, 8) px" in caplog.text
    with pytest.raises(SystemExit, match="--image-size 4 does not apply to --judge"):
        cli.run_command(["--judge", "1", "--image-size", "4"])
