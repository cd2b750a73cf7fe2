"""What the data itself scores: the held-out images split in two halves at random, one half judged against the
other exactly as samples are, next to policies sampled for that half's classes (the same number of images), so
that every metric has the data's own value beside it. Over ``--splits`` random splits, each row's mean ± std and
its paired difference from the prior's (mean ± standard error), to ``data_reference-<settings>.json``.

    python -m rlar.studies.data_reference [key=value ...] [--run RUN_DIR ...] [--temperature T ...]
        [--cfg-scale S ...] [--splits 20]

Rows: the held-out half (of the first ``eval.max_items`` held-out images); the same half through the tokenizer
(encoded and decoded: what a policy that drew the codes of real digits would score, the ceiling of any policy over
these codes); the prior (unguided, temperature 1);
the prior at each ``--temperature`` and each ``--cfg-scale``; each ``--run``'s final policy at its own rollout
settings. Split ``i`` samples under seed ``eval.seed + i``. Half as many images as the held-out split give noisier
values than an evaluation's: compare rows within one table (docs/evaluation.md).
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from pathlib import Path

import torch
from hydra.utils import instantiate

from rlar.config.validate import check_config, check_temperature, exit_on_config_error
from rlar.eval.evaluate import JUDGE_METRICS
from rlar.eval.generate import generate_images
from rlar.eval.model.build import build_eval_classifier
from rlar.eval.model.scorer import EvalModel, train_features
from rlar.eval.rejudge import check_judgeable, sample_std, settings_key
from rlar.eval.run_models import build_models, run_config
from rlar.rollout.sampling import evaluation_sampling
from rlar.runtime.atomic_files import atomic_write_text
from rlar.studies.report import mean_and_std, mean_std

REAL = "held-out half (the data)"
RECONSTRUCTED = "held-out half, through the tokenizer"


def halves(n: int, split: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Split ``split``'s two halves of ``range(n)`` (``[n // 2]``, ``[n - n // 2]``): the reference, then the half
    that stands in for samples."""
    order = torch.randperm(n, generator=torch.Generator().manual_seed(split))
    return order[: n // 2], order[n // 2:]


def paired(rows: list[dict], base: list[dict], metric: str) -> dict:
    """The mean and standard error over splits of ``rows``' ``metric`` minus ``base``'s, split by split."""
    diffs = [r[metric] - b[metric] for r, b in zip(rows, base, strict=True)]
    se = sample_std(diffs) / len(diffs) ** 0.5 if len(diffs) > 1 else float("nan")  # NaN where a split's is
    return {"mean": statistics.fmean(diffs), "se": se}


def summarise(rows: dict[str, list[dict]]) -> dict:
    """``{row: {metric: {"mean", "std", "values", "minus_prior": {"mean", "se"}}}}`` of each row's per-split
    judgements."""
    result = {}
    for name, judged in rows.items():
        result[name] = {}
        for m in JUDGE_METRICS:
            values = [j[f"eval/{m}"] for j in judged]
            mean, std = mean_and_std(values)
            result[name][m] = {"mean": mean, "std": std, "values": values,
                               "minus_prior": paired(judged, rows["prior"], f"eval/{m}")}
    return result


def data_reference(cfg, data, tokenizer, policies: dict[str, tuple], splits: int, device,
                   autocast=None) -> dict[str, list[dict]]:
    """``{row: [judgement of split 0, 1, ...]}`` of ``data``'s held-out images, of the same images through
    ``tokenizer``, and of ``policies`` (``{row: (policy, tokenizer, sampling)}``)."""
    classifier = build_eval_classifier(data, cfg.cache_dir, cfg.eval.classifier_model)  # trained if not cached
    items = slice(cfg.eval.max_items or None)
    images, labels = data.eval_images_of(items), data.eval_labels[items]  # [M, C, H, W], [M]
    # the frozen tokenizer encodes and decodes its own chunk at a time, without gradients
    reconstructed = tokenizer.decode_code(tokenizer.encode_indices(images.to(device))).float().cpu()  # [M, C, H, W]
    rows = {REAL: [], RECONSTRUCTED: [], **{name: [] for name in policies}}
    train = train_features(classifier, data, device)  # [T, F]: the same for every split
    for split in range(splits):  # samples are drawn without gradients (generate_images)
        reference, stand_in = halves(len(labels), split)
        judge = EvalModel(classifier, images[reference], labels[reference], device, train)
        asked = labels[stand_in]  # [m]
        rows[REAL].append(judge.metrics(*judge.describe(images[stand_in], asked), asked))
        rows[RECONSTRUCTED].append(judge.metrics(*judge.describe(reconstructed[stand_in], asked), asked))
        for name, (policy, policy_tokenizer, sampling) in policies.items():
            samples = generate_images(policy, policy_tokenizer, asked, sampling, cfg.eval.batch_size,
                                      torch.Generator().manual_seed(cfg.eval.seed + split), device, autocast)
            rows[name].append(judge.metrics(*judge.describe(samples, asked), asked))
    return rows


def table(result: dict) -> str:
    """The markdown table: each metric's mean ± std over splits, then recall's and coverage's paired differences
    from the prior."""
    lines = ["| | " + " | ".join(f"eval/{m}" for m in JUDGE_METRICS) + " | recall − prior's | coverage − prior's |",
             "|---|" + "---|" * (len(JUDGE_METRICS) + 2)]
    for name, metrics in result.items():
        cells = [mean_std(metrics[m]["values"], 2 if m == "fd" else 3) for m in JUDGE_METRICS]
        diffs = ["–" if name == "prior" else f"{metrics[m]['minus_prior']['mean']:+.3f} ± "
                 f"{metrics[m]['minus_prior']['se']:.3f}" for m in ("recall", "coverage")]
        lines.append(f"| {name} | " + " | ".join(cells + diffs) + " |")
    return "\n".join(lines)


def policies_to_judge(opts, tokenizer, prior, device) -> dict[str, tuple]:
    """The rows' ``(policy, tokenizer, sampling)``: the ``prior`` unguided, at each temperature and guidance scale of
    ``opts``, then each run's final policy at its own rollout settings."""
    plain = {"temperature": 1.0, "cfg_scale": 1.0}
    rows = {"prior": (prior, tokenizer, plain)}
    rows |= {f"prior, temperature {t:g}": (prior, tokenizer, {**plain, "temperature": t}) for t in opts.temperature}
    rows |= {f"prior, guidance {s:g}": (prior, tokenizer, {**plain, "cfg_scale": s}) for s in opts.cfg_scale}
    for run_dir in opts.run:
        run_cfg = run_config(run_dir, [])
        _, run_tokenizer, policy = build_models(run_cfg, device, run_dir)
        rows[f"run {run_dir}"] = (policy, run_tokenizer, evaluation_sampling(run_cfg.rollout, policy.block_size))
    return rows


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(prog="python -m rlar.studies.data_reference", description=__doc__.split("\n\n")[0])
    p.add_argument("overrides", nargs="*", help="key=value config overrides (the prior's config)")
    p.add_argument("--run", action="append", default=[], metavar="RUN_DIR", help="a finished run (repeatable)")
    p.add_argument("--temperature", type=float, action="append", default=[], help="the prior at this temperature")
    p.add_argument("--cfg-scale", type=float, action="append", default=[], help="the prior under this guidance")
    p.add_argument("--splits", type=int, default=20, help="random splits of the held-out images (default 20)")
    p.add_argument("--out", default="outputs/eval", help="folder of data_reference-*.json (default outputs/eval)")
    opts = p.parse_intermixed_args(argv)
    if opts.splits < 2:
        sys.exit(f"--splits {opts.splits}: at least 2 splits are needed for a spread")
    with exit_on_config_error(ValueError):
        cfg = run_config(None, opts.overrides)
        check_config(cfg, inception_eval=False, trains=False)  # no Inception is built here
        check_judgeable(cfg)
        for temperature in opts.temperature:
            check_temperature(temperature, "--temperature")
    if not cfg.eval.get("classifier"):
        sys.exit("config error: the data reference reads the judge: set eval.classifier=true")
    hw = instantiate(cfg.hardware)
    hw.setup()
    try:
        data, tokenizer, prior = build_models(cfg, hw.torch_device)
        policies = policies_to_judge(opts, tokenizer, prior, hw.torch_device)
        result = summarise(data_reference(cfg, data, tokenizer, policies, opts.splits, hw.torch_device, hw.autocast))
    finally:
        hw.teardown()
    # a result of its own for each setting: other splits, policies or overrides do not replace an earlier one's
    key = settings_key(cfg, runs=opts.run, temperatures=opts.temperature, cfg_scales=opts.cfg_scale)
    out = Path(opts.out) / f"data_reference-splits{opts.splits}-{key}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(out, json.dumps({"overrides": opts.overrides, "splits": opts.splits, "rows": result}, indent=2))
    print(table(result))
    print(f"-> {out}")
    return result


if __name__ == "__main__":
    main()
