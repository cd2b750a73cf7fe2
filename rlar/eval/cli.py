"""``rlar-eval`` (``python -m rlar.eval``): sample a policy, write the samples as an ADM-style ``.npz`` and a PNG
grid, and score them with Inception FID, IS, precision and recall; ``--make-reference`` writes the ``.npz`` of a
data split. See docs/evaluation.md."""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path

import numpy as np
import torch
from hydra.utils import instantiate

from rlar.config.validate import check_config, check_temperature, exit_on_config_error
from rlar.config.validate_shapes import has_images
from rlar.eval.generate import class_balanced_labels, generate_uint8
from rlar.eval.image_arrays import read_fit, read_images, split_uint8, write_grid, write_npz
from rlar.eval.inception import POOL_WIDTH, InceptionFeatures, default_weights_path, missing_weights_message
from rlar.eval.inception_metrics import FID_MIN_IMAGES, check_reference_size, inception_metrics
from rlar.eval.model.scorer import build_eval_model
from rlar.eval.rejudge import check_judgeable, judge_over_seeds, judgement_dir, settings_key, write_judgement
from rlar.eval.run_models import (
    build_models,
    checkpoint_tag,
    is_run_dir,
    judged_weights,
    reads_run_weights,
    run_config,
    started_folder,
    trained_nothing,
)
from rlar.export import run_policy_weights
from rlar.rollout.sampling import evaluation_sampling, truncation
from rlar.runtime.atomic_files import atomic_write_text
from rlar.runtime.files_read import content_stamps, entries_read
from rlar.runtime.user_modules import importable

log = logging.getLogger(__name__)
USAGE = """rlar-eval [RUN_DIR] [key=value ...] [options]
       rlar-eval [RUN_DIR] [key=value ...] --judge N [--temperature T] [--cfg-scale S] [--seed S] [--batch-size B]
       rlar-eval --make-reference OUT.npz [RUN_DIR] [key=value ...] [--split eval|train] [--max-images M]
                 [--image-size S]

RUN_DIR (a run's output directory): its recorded config (.hydra/config.yaml) and its fine-tuned policy
(checkpoints/last.pt); key=value overrides apply to that config (policy.checkpoint=PATH evaluates that checkpoint
instead). Without RUN_DIR the overrides compose a config as `python -m rlar.run` does (policy.checkpoint=...,
tokenizer=..., data=...)."""
NUM_SAMPLES = 1000  # --num-samples by default


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="rlar-eval", usage=USAGE, formatter_class=argparse.RawDescriptionHelpFormatter,
                                description="Sample a policy, write the samples as an ADM-style .npz and a PNG grid, "
                                            "and score them with Inception FID, IS, precision and recall "
                                            "(docs/evaluation.md).")
    p.add_argument("args", nargs="*", help="[RUN_DIR] then key=value config overrides")
    p.add_argument("--num-samples", type=int, help=f"images to sample (default {NUM_SAMPLES}; not with --judge: it "
                                                  "samples eval.samples_per_item per held-out item)")
    p.add_argument("--labels", choices=("balanced", "random"), default="balanced",
                   help="the samples' class labels: balanced, every class N/K times (within one), or random, each "
                        "drawn uniformly from the sampling seed's stream, as LlamaGen samples its FID-50K (not with "
                        "--judge, which samples each held-out item's label)")
    p.add_argument("--cfg-scale", type=float, help="classifier-free guidance scale (default: the run's rollout's)")
    p.add_argument("--temperature", type=float, help="sampling temperature (default: the run's rollout's)")
    p.add_argument("--batch-size", type=int, help="sampling and Inception batch size, as eval.batch_size (default: "
                                                  "eval.batch_size; with --judge held-out items per batch)")
    p.add_argument("--seed", type=int, help="sampling seed, as eval.seed (default: eval.seed; with --judge the first "
                                            "eval seed)")
    p.add_argument("--out", help="output folder (default: RUN_DIR/eval/<settings>, else outputs/eval/<settings>; "
                                 "with policy.checkpoint=PATH in <stem>-<hash of PATH>/ there)")
    p.add_argument("--reference", help="reference images: an .npz (arr_0 uint8 [N, H, W, 3]) or an image folder "
                                       "(default: the data's held-out split; not with --judge, which compares with "
                                       "the held-out split)")
    p.add_argument("--inception-weights", help=f"the Inception weights file, as eval.inception.weights (default: "
                                               f"eval.inception.weights, else <cache_dir>/inception/"
                                               f"{default_weights_path().name})")
    p.add_argument("--judge", type=int, metavar="N",
                   help="instead of Inception metrics: the embedded judge's eval/fd, class_acc, precision, recall, "
                        "density, coverage, diversity and memorization under N eval seeds (--seed or eval.seed, "
                        "then +1, ...), mean ± std, to judge.json; needs no Inception weights")
    p.add_argument("--image-size", type=int, metavar="S",
                   help="resize the samples (and the default reference, the held-out split) to S x S px, bicubic, as "
                        "LlamaGen's image_size_eval (e.g. 256 for a 384-px model against ADM's 256-px references; "
                        "not with --judge)")
    p.add_argument("--samples-only", action="store_true", help="write the samples and the grid, compute no metric")
    p.add_argument("--make-reference", metavar="OUT.npz", help="write the .npz of a data split, then stop")
    p.add_argument("--split", choices=("eval", "train"), default="eval", help="the split of --make-reference")
    p.add_argument("--max-images", type=int, help="--make-reference: a fixed random subset of MAX_IMAGES images of "
                   "the split (every class its share)")
    return p


def main() -> None:
    """The console script: ``rlar-eval ARGS``, with the current folder's modules importable."""
    importable()
    run_command(sys.argv[1:])


def run_command(argv: list[str]) -> dict:
    """Run ``rlar-eval argv``; returns the metrics written to ``metrics.json`` (``{}`` for ``--make-reference``
    and ``--samples-only``), or with ``--judge`` the record written to ``judge.json``."""
    opts = parser().parse_intermixed_args(argv)
    if opts.judge is not None:
        check_judge_options(opts)
    check_reference_options(opts)
    for option, value in (("--num-samples", opts.num_samples), ("--max-images", opts.max_images),
                          ("--image-size", opts.image_size)):
        if value is not None and value < 1:
            sys.exit(f"{option} takes a count of at least 1, got {value}")
    scores = not (opts.samples_only or opts.make_reference)  # Inception metrics (--judge refused --num-samples)
    if scores and opts.num_samples is not None and opts.num_samples < FID_MIN_IMAGES:
        sys.exit(f"--num-samples {opts.num_samples}: FID fits a covariance to the samples and needs at least "
                 f"{FID_MIN_IMAGES}; give --num-samples {FID_MIN_IMAGES} or more, or --samples-only for no metric")
    with exit_on_config_error():
        check_temperature(opts.temperature, "--temperature")
    if opts.args and "=" not in opts.args[0] and not is_run_dir(opts.args[0]):
        sys.exit(f"'{opts.args[0]}' is not a run directory (no .hydra/config.yaml in it) nor a key=value override"
                 + runs_beneath(opts.args[0]))
    run_dir = opts.args[0] if opts.args and is_run_dir(opts.args[0]) else None
    overrides = opts.args[1:] if run_dir else opts.args
    if run_dir:
        importable(started_folder(run_dir))  # the modules the run's _target_s named, from where it started
    with exit_on_config_error(ValueError):
        cfg = run_config(run_dir, overrides)
        apply_options(cfg, opts)
        check_config(cfg, inception_eval=False, trains=False)  # eval.inception: the training's; the options say
    check_data_images(cfg, opts)
    if opts.make_reference:
        make_reference(cfg, opts.make_reference, opts.split, opts.max_images, opts.image_size)
        return {}
    run_weights = reads_run_weights(run_dir, overrides)
    check_saved_weights(run_weights)
    weights = Path(cfg.eval.inception.weights or default_weights_path(cfg.cache_dir)).expanduser().absolute()
    if opts.judge is not None:  # before any model is built
        try:
            check_judgeable(cfg)
        except ValueError as e:
            sys.exit(str(e))
    else:
        check_class_conditional(cfg)
        if not opts.samples_only and not weights.is_file():  # before any sampling
            sys.exit(missing_weights_message(weights))
    hw = instantiate(cfg.hardware)
    hw.setup()
    try:
        judged = judged_weights(cfg, run_weights)
        if opts.judge is not None:
            return judge_and_write(cfg, opts, hw, judged, eval_dir(run_dir, judged))
        return sample_and_score(cfg, opts, hw, judged, eval_dir(run_dir, judged), weights)
    finally:
        hw.teardown()


def runs_beneath(folder: str, shown: int = 5) -> str:
    """``"; the runs in it: ..."``, the run directories under ``folder`` (a run made with overrides lives in
    ``outputs/<name>/<overrides>/``), or ``""``."""
    found = sorted(p.parent.parent for p in Path(folder).glob("**/.hydra/config.yaml")) if Path(folder).is_dir() else []
    if not found:
        return ""
    more = f" and {len(found) - shown} more" if len(found) > shown else ""
    return f"; the runs in it: {', '.join(str(p) for p in found[:shown])}{more}: give one of them"


def check_judge_options(opts: argparse.Namespace) -> None:
    """Refuse (exit) what ``--judge`` cannot honour: fewer than 1 seed, and the options of the Inception metrics."""
    if opts.judge < 1:
        sys.exit(f"--judge takes the number of eval seeds, at least 1, got {opts.judge}")
    if opts.num_samples is not None:
        sys.exit(f"--num-samples {opts.num_samples} does not apply to --judge, which samples eval.samples_per_item "
                 "images per held-out item: drop it, or set eval.samples_per_item=K")
    if opts.reference is not None:
        sys.exit(f"--reference {opts.reference} does not apply to --judge, which compares with the data's held-out "
                 "split: drop it, or leave out --judge for Inception metrics against it")
    if opts.labels != "balanced":
        sys.exit(f"--labels {opts.labels} does not apply to --judge, which samples each held-out item's label: drop "
                 "it, or leave out --judge for Inception metrics")
    if opts.image_size is not None:
        sys.exit(f"--image-size {opts.image_size} does not apply to --judge, whose classifier reads the data's own "
                 "size: drop it, or leave out --judge for Inception metrics at that size")
    for option, given in (("--samples-only", opts.samples_only), ("--make-reference", opts.make_reference)):
        if given:
            sys.exit(f"{option} does not apply to --judge, which samples and judges over eval seeds: run it without "
                     "--judge")


def check_reference_options(opts: argparse.Namespace) -> None:
    """Refuse (exit) ``--split`` and ``--max-images`` without ``--make-reference``: the metrics compare with the whole
    held-out split (or ``--reference``), whatever they say; and with it, the options of sampling and scoring, which
    it would ignore (it writes a data split and stops)."""
    if opts.make_reference:
        unread = {"--num-samples": opts.num_samples, "--labels": opts.labels if opts.labels != "balanced" else None,
                  "--cfg-scale": opts.cfg_scale, "--temperature": opts.temperature, "--batch-size": opts.batch_size,
                  "--seed": opts.seed, "--out": opts.out, "--reference": opts.reference,
                  "--inception-weights": opts.inception_weights, "--samples-only": opts.samples_only or None}
        given = [option for option, value in unread.items() if value is not None]
        if given:
            sys.exit(f"{', '.join(given)}: not read by --make-reference {opts.make_reference}, which writes the "
                     "images of a data split there and samples nothing: drop them, or run the command again without "
                     "--make-reference to sample and score")
        return
    for option, value in (("--split", opts.split != "eval" and opts.split), ("--max-images", opts.max_images)):
        if value:
            sys.exit(f"{option} {value} chooses the images of --make-reference OUT.npz; without it the metrics "
                     "compare with the whole held-out split: drop it, or write the reference first (--make-reference) "
                     "and give it as --reference")


def check_data_images(cfg, opts: argparse.Namespace) -> None:
    """Refuse (exit, before any model is built) what reads the data's images where it has none (``data=prompts``):
    ``--judge`` (its held-out split), ``--make-reference``, and metrics against the default reference."""
    if has_images(cfg.data):
        return
    reads = ("--judge" if opts.judge is not None else "--make-reference" if opts.make_reference
             else None if opts.samples_only or opts.reference else "the default reference (the held-out split)")
    if reads:
        sys.exit(f"{reads} reads the data's images, and data={cfg.data._target_} has none (prompts only): give "
                 "--reference X.npz for Inception metrics, --samples-only for the samples alone, or data with images")


def check_class_conditional(cfg) -> None:
    """Refuse (exit, before any model is built) a text-conditioned config: the samples are drawn under class labels
    (``--judge``'s: :func:`~rlar.eval.rejudge.check_judgeable`)."""
    if cfg.get("text_encoder") is not None:
        sys.exit(f"rlar-eval samples class-conditional policies under class labels; a text-conditioned run "
                 f"(text_encoder={cfg.text_encoder._target_}) is conditioned on captions and scored by its own "
                 "evaluations (eval/attr/*); --make-reference still writes the .npz of its data")


def check_saved_weights(run_dir: str | None) -> None:
    """Refuse (exit, before anything is built) a run dir whose weights are to be read but that saved none, such as
    the ``outputs/default`` that ``rlar-prepare`` writes (a run that trained nothing is evaluated as its prior)."""
    if run_dir and not trained_nothing(run_dir):
        try:
            run_policy_weights(Path(run_dir))
        except FileNotFoundError as e:
            sys.exit(str(e))


def apply_options(cfg, opts: argparse.Namespace) -> None:
    """``--seed``, ``--batch-size`` and ``--inception-weights``, where given, as ``cfg.eval.seed``,
    ``cfg.eval.batch_size`` and ``cfg.eval.inception.weights`` (what the samples and ``--judge`` read)."""
    for key, value in (("seed", opts.seed), ("batch_size", opts.batch_size)):
        if value is not None:
            cfg.eval[key] = value
    if opts.inception_weights:
        cfg.eval.inception.weights = opts.inception_weights


def eval_dir(run_dir: str | None, judged: dict) -> Path:
    """The default folder of the outputs' folders: ``RUN_DIR/eval``, else ``outputs/eval``; for weights from
    ``policy.checkpoint`` (``judged``: :func:`judged_weights`), its own :func:`checkpoint_tag` folder in it."""
    base = Path(run_dir or "outputs") / "eval"
    return base / checkpoint_tag(judged["checkpoint"]) if judged["checkpoint"] else base


def judge_and_write(cfg, opts, hw, judged: dict, base: Path) -> dict:
    """``--judge N``: the judge's metrics of the policy (``judged``: :func:`judged_weights`) under N eval seeds,
    written to ``judge.json`` (in ``--out``, else a folder of the settings in ``base``)."""
    with entries_read() as read:  # the cache entries of the tokenizer, the prior and the judge
        data, tokenizer, policy = build_models(cfg, hw.torch_device, judged["run"])
        eval_model = build_eval_model(data, cfg.eval, cfg.cache_dir, hw.torch_device)
    scale, temperature, sampling = sampling_settings(cfg, opts, policy)
    seeds = list(range(cfg.eval.seed, cfg.eval.seed + opts.judge))
    settings = {**judged, "cfg_scale": scale, "temperature": temperature, **truncation(cfg.rollout), "seeds": seeds,
                "samples_per_item": cfg.eval.samples_per_item, "batch_size": cfg.eval.batch_size,
                "cache_entries": content_stamps(read)}
    out = Path(opts.out or judgement_dir(base, cfg, scale, temperature, seeds))
    # each seed kept as it is judged: a judgement stopped at seed 7 resumes there, for the same weights and settings
    identity = {**{k: v for k, v in settings.items() if k != "seeds"}, "config": settings_key(cfg),
                "weights": weights_stamp(judged)}
    metrics = judge_over_seeds(cfg, data, tokenizer, policy, eval_model, sampling, seeds, hw.torch_device,
                               hw.autocast, out / "seeds", identity)
    write_judgement(out, metrics, settings)
    return {"metrics": metrics, **settings}


def weights_stamp(judged: dict) -> list:
    """``[[path, modification time (ns), size], ...]`` of the files holding the judged weights (a run's saved weights,
    a checkpoint file, the files of an exported folder; none for the prior its config builds)."""
    if judged["run"] is not None:  # a run that trained nothing is judged as the prior its config builds
        files = [] if trained_nothing(judged["run"]) else [run_policy_weights(Path(judged["run"]))]
    elif judged["checkpoint"] is not None:
        path = Path(judged["checkpoint"])
        files = sorted(path.iterdir()) if path.is_dir() else [path]
    else:
        files = []
    return [[str(f), f.stat().st_mtime_ns, f.stat().st_size] for f in files if f.is_file()]


def sampling_settings(cfg, opts, policy) -> tuple[float, float, dict]:
    """``(cfg_scale, temperature, sampling)``: the options' scale and temperature, else the run's rollout's, and the
    sampling arguments they give ``policy`` (with the rollout's top-k and top-p)."""
    scale = cfg.rollout.cfg_scale if opts.cfg_scale is None else opts.cfg_scale
    temperature = cfg.rollout.temperature if opts.temperature is None else opts.temperature
    return scale, temperature, evaluation_sampling(cfg.rollout, policy.block_size, scale, temperature)


def make_reference(cfg, out: str, split: str, max_images: int | None, image_size: int | None) -> None:
    """The ``.npz`` (and grid) of the ``split`` images of ``cfg.data`` (a fixed random subset of ``max_images``),
    resized to ``image_size`` where given."""
    images = split_uint8(instantiate(cfg.data), split, max_images, image_size)  # [N, H, W, 3]
    path = write_npz(out, images)
    write_grid(path.with_suffix(".png"), images)
    print(f"reference: {path} ({split} split, uint8 {list(images.shape)}), grid {path.with_suffix('.png')}")


def checked_reference(path: str | None, held_out: np.ndarray | None = None) -> tuple[np.ndarray, tuple | None]:
    """``(images [M, H, W, 3], (mu, sigma) or None)``: the ``--reference`` file at ``path`` (else the ``held_out``
    split's images, without a fit), checked as FID needs it; else the command ends with the error in one line."""
    try:
        reference = read_images(path) if path else held_out
        check_reference_size(len(reference), f"--reference {path}" if path else "the held-out split")
        return reference, (read_fit(path, POOL_WIDTH) if path else None)
    except (OSError, ValueError) as e:
        sys.exit(f"rlar-eval: {e}")


def sample_and_score(cfg, opts, hw, judged: dict, base: Path, weights: Path) -> dict:
    """Sample the policy (``judged``: :func:`judged_weights`), write ``samples.npz`` and ``samples.png``, and (unless
    ``--samples-only``) ``metrics.json``, in ``--out``, else a folder of the settings in ``base`` (named by the
    readable ones and :func:`settings_key` of the config and the reference: the samples depend on ``eval.batch_size``
    too, each batch drawing the stream's next numbers). The Inception network is loaded and the reference read (and
    so checked: at least 2 images, a fit of the pool features) before any sampling; FID compares with its ``mu`` and
    ``sigma`` where it is an ADM reference batch that has them; a ``--reference`` file is read before the models are
    built, and one FID cannot compare with ends the command with a one-line message."""
    device = hw.torch_device
    size = opts.image_size
    if opts.reference and not opts.samples_only:
        reference, reference_fit = checked_reference(opts.reference)  # [M, H, W, 3], the fit or None
    data, tokenizer, policy = build_models(cfg, device, judged["run"])
    if not opts.samples_only:
        features = InceptionFeatures(weights, device, cfg.eval.batch_size)
        if not opts.reference:
            reference, reference_fit = checked_reference(None, split_uint8(data, "eval", image_size=size))
    scale, temperature, sampling = sampling_settings(cfg, opts, policy)
    seed, batch_size = cfg.eval.seed, cfg.eval.batch_size
    num_samples = NUM_SAMPLES if opts.num_samples is None else opts.num_samples
    settings = (f"n{num_samples}-cfg{scale:g}-temp{temperature:g}-seed{seed}" + (f"-px{size}" if size else "")
                + ("-randlabels" if opts.labels == "random" else ""))
    # (the key of a folder without these options: as before them)
    optional = {**({} if size is None else {"image_size": size}),
                **({} if opts.labels == "balanced" else {"labels": opts.labels})}
    out = Path(opts.out or base / f"{settings}-{settings_key(cfg, reference=opts.reference, **optional)}")
    generator = torch.Generator().manual_seed(seed)
    labels = (class_balanced_labels(num_samples, data.num_classes) if opts.labels == "balanced"
              else torch.randint(data.num_classes, (num_samples,), generator=generator))  # [N], then the samples' draws
    samples = generate_uint8(policy, tokenizer, labels, sampling, batch_size, generator, device, hw.autocast,
                             size)  # [N, H, W, 3]
    write_npz(out / "samples.npz", samples)
    write_grid(out / "samples.png", samples)
    print(f"samples: {out / 'samples.npz'} (arr_0: uint8 {list(samples.shape)}; {settings}), "
          f"grid {out / 'samples.png'}")
    if opts.samples_only:
        return {}
    if reference.shape[1:3] != samples.shape[1:3]:
        log.warning("the samples are %s px and the reference %s px: Inception resizes both to 299 px, but FID "
                    "compares images of different detail; --image-size S resizes the samples", samples.shape[1:3],
                    reference.shape[1:3])
    pool, logits = features(samples)
    metrics = inception_metrics(pool, logits, features(reference)[0], reference_fit)
    record = {**metrics, **judged, "num_samples": len(samples), "num_reference": len(reference),
              "reference": (str(Path(opts.reference).expanduser().absolute()) if opts.reference
                            else f"held-out split of data ({cfg.data._target_})"),
              "fid_reference": (f"mu/sigma of {Path(opts.reference).name}" if reference_fit
                                else f"features of {len(reference)} images"), "cfg_scale": scale,
              "temperature": temperature, **truncation(cfg.rollout), "seed": seed, "batch_size": batch_size,
              "labels": opts.labels,
              "image_size": samples.shape[1],
              "inception_weights": str(weights)}
    atomic_write_text(out / "metrics.json", json.dumps(record, indent=2))
    print(f"Inception FID {metrics['fid']:.4g}  IS {metrics['is']:.4g} ± {metrics['is_std']:.2g}  "
          f"precision {metrics['precision']:.4g}  recall {metrics['recall']:.4g}  "
          f"density {metrics['density']:.4g}  coverage {metrics['coverage']:.4g}  "
          f"({len(samples)} samples vs {len(reference)} reference images; FID vs {record['fid_reference']}) -> "
          f"{out / 'metrics.json'}")
    return record
