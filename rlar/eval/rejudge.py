"""``rlar-eval --judge N``: the embedded judge's metrics of a policy under N evaluation seeds, as mean and sample std.

One evaluation's sampling noise (about 2 units of ``eval/fd`` at 4 samples per held-out digit, docs/evaluation.md)
is as large as many differences worth knowing, such as RL against the prior at its best temperature; repeating the
evaluation under seeds ``eval.seed``, ``eval.seed + 1``, ... and averaging tells them apart. The seed ``eval.seed``
repeats a one-process run's own evaluation exactly (under torchrun each rank sampled from ``eval.seed + rank``).
"""

from __future__ import annotations

import json
import math
import statistics
from pathlib import Path

import torch
from omegaconf import DictConfig, OmegaConf

from rlar.eval.evaluate import JUDGE_METRICS, evaluate_under
from rlar.runtime.atomic_files import atomic_write_text
from rlar.runtime.cache import spec_key


def unscored(images: torch.Tensor, targets: torch.Tensor | None = None, meta: dict | None = None):
    """The reward of a judge-only evaluation: none (zeros ``[N]``, no components); only the judge's metrics count."""
    return torch.zeros(len(images), device=images.device), {}


def check_judgeable(cfg: DictConfig) -> None:
    """Refuse (``ValueError``) a config the judge-only evaluation cannot condition: a text-conditioned one."""
    if cfg.get("text_encoder") is not None:
        raise ValueError("rlar-eval --judge scores class-conditional policies; a text-conditioned run "
                         f"(text_encoder={cfg.text_encoder._target_}) is judged by its own evaluations "
                         "(eval/attr/*): rerun it with another eval.seed instead")


def judge_over_seeds(cfg: DictConfig, data, tokenizer, policy, eval_model, sampling: dict, seeds: list[int], device,
                     autocast=None, kept: Path | None = None, identity: dict | None = None) -> dict:
    """``{"eval/<metric>": {"mean", "std", "values"}}`` for the judge's (``eval_model``: ``build_eval_model``)
    metrics (``JUDGE_METRICS``) of ``cfg.eval.samples_per_item`` samples per held-out item, evaluated once per seed
    in ``seeds`` (a class-conditional ``cfg``: :func:`check_judgeable`). With ``kept``, each seed's metrics are kept
    there as it is judged (``seed<s>.json``, with ``identity``: what was judged), and a seed an interrupted judgement
    of the same ``identity`` left there is read, not judged again."""

    def judged(seed: int) -> dict:
        result = evaluate_under(policy, tokenizer, unscored, data, OmegaConf.merge(cfg.eval, {"seed": seed}), sampling,
                                device, autocast, eval_model)
        return {f"eval/{name}": result[f"eval/{name}"] for name in JUDGE_METRICS}

    runs = [judged(seed) if kept is None else kept_seed(kept / f"seed{seed}.json", identity, lambda s=seed: judged(s))
            for seed in seeds]
    return {f"eval/{name}": seed_spread([run[f"eval/{name}"] for run in runs]) for name in JUDGE_METRICS}


def sample_std(values: list[float]) -> float:
    """The sample std of ``values`` (2 or more); NaN where one is not finite (a metric the judge could not measure,
    e.g. density with too few held-out items), where ``statistics.stdev`` raises."""
    return statistics.stdev(values) if all(math.isfinite(v) for v in values) else math.nan


def seed_spread(values: list[float]) -> dict:
    """``{"mean", "std", "values"}`` of a metric over eval seeds; the std of one seed is 0."""
    return {"mean": statistics.fmean(values), "std": sample_std(values) if len(values) > 1 else 0.0, "values": values}


def kept_seed(path: Path, identity: dict | None, judge) -> dict:
    """The metrics ``path`` keeps for ``identity`` (all of the judge's: one kept before the judge measured another is
    judged again), else ``judge()``'s, then kept there (written whole)."""
    try:
        record = json.loads(path.read_text())
        metrics = record.get("metrics")
        if record.get("identity") == identity and isinstance(metrics, dict) and all(
                f"eval/{name}" in metrics for name in JUDGE_METRICS):
            return metrics
    except (OSError, ValueError):  # none yet, or unreadable: judged again
        pass
    metrics = judge()
    atomic_write_text(path, json.dumps({"identity": identity, "metrics": metrics}, indent=2))
    return metrics


def settings_key(cfg: DictConfig, **more) -> str:
    """8 hex digits of the whole config ``cfg`` (unresolved) and ``more``: what an output folder of ``rlar-eval`` is
    named by beside its readable settings, so that outputs under any other setting (``eval.batch_size``,
    ``eval.samples_per_item``, any override) land in a folder of their own, and the same command finds its own."""
    return spec_key({"config": OmegaConf.to_container(cfg, resolve=False), **more}, length=8)


def judgement_dir(base: str | Path, cfg: DictConfig, cfg_scale: float, temperature: float, seeds: list[int]) -> Path:
    """``base/judge-cfg<s>-temp<t>-seeds<a>-<b>-<settings_key(cfg)>``: where ``rlar-eval --judge`` writes
    ``judge.json`` by default (``base``: the run's ``eval/`` folder; ``cfg``: the config it judges under)."""
    return Path(base) / f"judge-cfg{cfg_scale:g}-temp{temperature:g}-seeds{seeds[0]}-{seeds[-1]}-{settings_key(cfg)}"


def write_judgement(out: Path, metrics: dict, settings: dict) -> Path:
    """``out/judge.json`` (the settings and the metrics), written atomically; prints one line per metric."""
    out.mkdir(parents=True, exist_ok=True)
    path = out / "judge.json"
    atomic_write_text(path, json.dumps({**settings, "metrics": metrics}, indent=2))  # whole, or the old one
    for name, m in metrics.items():
        print(f"{name} {m['mean']:.4g} ± {m['std']:.2g} over {len(m['values'])} eval seeds "
              f"({' '.join(f'{v:.4g}' for v in m['values'])})")
    print(f"-> {path}")
    return path
