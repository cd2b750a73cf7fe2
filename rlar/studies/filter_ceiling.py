"""What a reward can buy by filtering alone: a policy's samples kept only where the reward accepts them
(``reward > threshold``; with ``reward=class_consistency``, the reward classifier's probability of the asked class),
judged like an evaluation. An accept/reject reward under a KL anchor to the policy is maximised by exactly this
distribution, the policy restricted to what the reward accepts; fine-tuning beats it only by learning more than the
reward's verdicts (docs/evaluation.md).

    python -m rlar.studies.filter_ceiling [RUN_DIR] [key=value ...] [--draws 16] [--threshold 0.5] [--judge 3]

For each of ``--judge`` eval seeds, ``--draws`` samples per held-out item; the judge reads the first
``eval.samples_per_item`` of them (the policy as it is) and the first ``eval.samples_per_item`` accepted ones (the
filtered policy). Prints both rows (mean ± std over the seeds) and the acceptance rate; writes them to
``filter-<settings>.json``.
"""

from __future__ import annotations

import argparse
import json
import sys
from contextlib import closing
from pathlib import Path

import torch
from hydra.utils import instantiate

from rlar.config.validate import check_config, check_temperature, exit_on_config_error, target_readers
from rlar.eval.cli import sampling_settings
from rlar.eval.evaluate import JUDGE_METRICS
from rlar.eval.generate import generate_images
from rlar.eval.model.scorer import EvalModel, build_eval_model
from rlar.eval.rejudge import check_judgeable, seed_spread, settings_key
from rlar.eval.run_models import build_models, is_run_dir, reads_run_weights, run_config
from rlar.reward.build import build_reward
from rlar.reward.scoring import scoring_only
from rlar.runtime.atomic_files import atomic_write_text


def accepted_first(accepted: torch.Tensor, k: int) -> torch.Tensor:
    """``[n, k]`` indices into the draws of each row of ``accepted [n, K]`` (bool): its first ``k`` accepted draws
    in draw order, topped up with its first rejected ones where fewer than ``k`` are accepted."""
    if not 1 <= k <= accepted.shape[1]:
        raise ValueError(f"keeping {k} of {accepted.shape[1]} draws per item: --draws must be at least "
                         f"eval.samples_per_item ({k})")
    return torch.sort((~accepted).to(torch.uint8), dim=1, stable=True).indices[:, :k]


def check_scores_on_its_own(reward_fn, images: torch.Tensor, labels: torch.Tensor) -> None:
    """Refuse a reward that learns across calls (a discriminator, moving averages): built afresh, it has learned
    nothing to filter with. It is told by the state it keeps after scoring ``images [n, C, H, W]`` once."""
    with scoring_only(reward_fn):  # such a reward builds its state on its first call
        reward_fn(images, None, {"labels": labels})
    if reward_fn.state_dict():
        raise ValueError(f"{type(reward_fn).__name__} learns across calls (a discriminator, moving averages): built "
                         "afresh it has learned nothing to filter with; use a reward that scores on its own, e.g. "
                         "reward=class_consistency")


def check_free_running_reward(cfg) -> None:
    """Refuse a reward that compares each sample with its input image (``reads_targets``: l2, perceptual, the VA-pi
    mix): the study scores free-running samples, which have none."""
    readers = target_readers(cfg)
    if readers:
        raise ValueError(f"{readers[0]} compares each sample with its input image, and the filter scores free-running "
                         "samples, which have none: give a reward that scores a sample on its own, e.g. "
                         "reward=class_consistency")


def kept_metrics(eval_model: EvalModel, features: torch.Tensor, hits: torch.Tensor, labels: torch.Tensor,
                 keep: torch.Tensor) -> dict[str, float]:
    """The judge's metrics of the draws ``keep [n, k]`` of each item, from ``features [n, K, F]``, ``hits [n, K]``
    and the items' classes ``labels [n]``."""
    rows = torch.arange(len(keep))[:, None]
    return eval_model.metrics(features[rows, keep].flatten(0, 1), hits[rows, keep].flatten(),
                              labels.repeat_interleave(keep.shape[1]), per_item=keep.shape[1])


@torch.no_grad()
def draw_and_read(policy, tokenizer, reward_fn, eval_model: EvalModel, labels: torch.Tensor, draws: int,
                  sampling: dict, eval_cfg, seed: int, device, autocast=None):
    """``draws`` samples for each class of ``labels [n]``: the judge's ``features [n, K, F]`` and ``hits [n, K]``,
    and the reward ``[n, K]``."""
    asked = labels.repeat_interleave(draws)  # [n*K], the K draws of an item adjacent
    images = generate_images(policy, tokenizer, asked, sampling, eval_cfg.batch_size,
                             torch.Generator().manual_seed(seed), device, autocast)  # [n*K, C, H, W]
    features, hits, rewards = [], [], []
    with scoring_only(reward_fn):
        for x, y in zip(images.split(eval_cfg.batch_size), asked.split(eval_cfg.batch_size), strict=True):
            x, y = x.to(device), y.to(device)
            rewards.append(reward_fn(x, None, {"labels": y})[0].float().cpu())
            reward_fn.metrics()  # each batch a round: a remote reward's max_consecutive_failures counts batches
            f, hit = eval_model.describe(x, y)
            features.append(f.cpu())
            hits.append(hit.cpu())
    n = len(labels)
    return torch.cat(features).view(n, draws, -1), torch.cat(hits).view(n, draws), torch.cat(rewards).view(n, draws)


def filter_ceiling(cfg, opts, run_dir, seeds: list[int], hw) -> dict:
    """``{"policy": {metric: mean_std}, "filtered": {...}, "accepted": mean_std, "cfg_scale", "temperature"}`` over
    ``seeds``, of ``opts.draws`` draws per item sampled under ``opts.cfg_scale`` and ``opts.temperature`` (default:
    the run's; the values used are returned)."""
    device = hw.torch_device
    data, tokenizer, policy = build_models(cfg, device, run_dir)
    scale, temperature, sampling = sampling_settings(cfg, opts, policy)
    rows = {"policy": [], "filtered": []}
    accepted_rates = []
    with closing(build_reward(cfg, data)) as reward_fn:  # on the run's data; it is checked before any sampling
        check_scores_on_its_own(reward_fn, data.eval_images_of(slice(0, 2)).to(device), data.eval_labels[:2].to(device))
        eval_model = build_eval_model(data, cfg.eval, cfg.cache_dir, device)
        labels = data.eval_labels[slice(cfg.eval.max_items or None)]
        k = cfg.eval.samples_per_item
        for seed in seeds:
            features, hits, rewards = draw_and_read(policy, tokenizer, reward_fn, eval_model, labels, opts.draws,
                                                    sampling, cfg.eval, seed, device, hw.autocast)
            accepted = rewards > opts.threshold  # [n, K]
            accepted_rates.append(float(accepted.float().mean()))
            every = torch.arange(k).expand(len(labels), k)
            rows["policy"].append(kept_metrics(eval_model, features, hits, labels, every))
            rows["filtered"].append(kept_metrics(eval_model, features, hits, labels, accepted_first(accepted, k)))
    result = {name: {m: seed_spread([r[f"eval/{m}"] for r in runs]) for m in JUDGE_METRICS}
              for name, runs in rows.items()}
    return {**result, "accepted": seed_spread(accepted_rates), "cfg_scale": scale, "temperature": temperature}


def result_name(record: dict, cfg) -> str:
    """``filter-draws<d>-thr<t>-cfg<s>-temp<T>-seeds<a>-<b>-<settings_key>.json``: a result of its own for each
    setting (another ``--threshold``, ``--draws`` or override does not replace an earlier one's), the same command's
    found again."""
    seeds = record["seeds"]
    return (f"filter-draws{record['draws']}-thr{record['threshold']:g}-cfg{record['cfg_scale']:g}-"
            f"temp{record['temperature']:g}-seeds{seeds[0]}-{seeds[-1]}-{settings_key(cfg)}.json")


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(prog="python -m rlar.studies.filter_ceiling", description=__doc__.split("\n\n")[0])
    p.add_argument("args", nargs="*", help="[RUN_DIR] then key=value config overrides")
    p.add_argument("--draws", type=int, default=16, help="samples drawn per held-out item (default 16)")
    p.add_argument("--threshold", type=float, default=0.5, help="a draw is accepted where its reward exceeds this")
    p.add_argument("--cfg-scale", type=float, help="classifier-free guidance scale (default: the run's rollout's)")
    p.add_argument("--temperature", type=float, help="sampling temperature (default: the run's rollout's)")
    p.add_argument("--judge", type=int, default=3, metavar="N", help="eval seeds eval.seed, eval.seed+1, ... (3)")
    p.add_argument("--out", help="folder of filter-*.json (default: RUN_DIR/eval, else outputs/eval)")
    opts = p.parse_intermixed_args(argv)
    run_dir = opts.args[0] if opts.args and is_run_dir(opts.args[0]) else None
    overrides = opts.args[1:] if run_dir else opts.args
    if opts.judge < 1:
        sys.exit(f"--judge takes the number of eval seeds, at least 1, got {opts.judge}")
    with exit_on_config_error(ValueError):
        cfg = run_config(run_dir, overrides)
        check_config(cfg, inception_eval=False, trains=False)  # no Inception is built here
        check_judgeable(cfg)
        check_temperature(opts.temperature, "--temperature")
        check_free_running_reward(cfg)
    if opts.draws < cfg.eval.samples_per_item:
        sys.exit(f"--draws {opts.draws} must be at least eval.samples_per_item ({cfg.eval.samples_per_item})")
    hw = instantiate(cfg.hardware)
    hw.setup()
    seeds = list(range(cfg.eval.seed, cfg.eval.seed + opts.judge))
    try:
        with exit_on_config_error(ValueError):
            result = filter_ceiling(cfg, opts, reads_run_weights(run_dir, overrides), seeds, hw)
    finally:
        hw.teardown()
    record = {"run": run_dir, "overrides": overrides, "draws": opts.draws, "threshold": opts.threshold, "seeds": seeds,
              "samples_per_item": cfg.eval.samples_per_item, **result}
    out = Path(opts.out or Path(run_dir or "outputs") / "eval") / result_name(record, cfg)
    out.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(out, json.dumps(record, indent=2))
    for name in ("policy", "filtered"):
        print(f"{name:9s} " + "  ".join(f"{m} {result[name][m]['mean']:.4g} ± {result[name][m]['std']:.2g}"
                                          for m in JUDGE_METRICS))
    print(f"accepted {result['accepted']['mean']:.3f} of the draws (reward > {opts.threshold}) -> {out}")
    return record


if __name__ == "__main__":
    main()
