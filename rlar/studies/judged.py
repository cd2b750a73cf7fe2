"""A study's runs judged over several eval seeds (the study file's ``judge: N``): each run's final policy, and the
prior, evaluated by the embedded judge under ``eval.seed``, ..., ``eval.seed + N - 1`` (``rlar-eval --judge N``),
so that a setting's numbers are not one evaluation's draw (about 2 units of eval/fd, docs/evaluation.md).

A run's judgement is its ``eval/judge-.../judge.json``, written once and read again (judged anew when it lacks one
of the judge's metrics: written before the judge measured it, or when the run's weights were saved after it: the run
extended to more iterations or trained again); the prior's lands in
``outputs/ablations/judged/<study>/``, keyed by the whole config it is judged under (the study's overrides
and the command line's), so that a change to an experiment's defaults or the thread count judges it anew. Any
judgement is made again when a cache entry it read (``judge.json``'s ``cache_entries``: the cached prior, tokenizer
and judge, by content) has changed since: a cache rebuilt under the same names to other weights.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

from omegaconf import OmegaConf

from rlar.config.store import compose_config
from rlar.eval.cli import run_command
from rlar.eval.evaluate import JUDGE_METRICS
from rlar.eval.rejudge import judgement_dir
from rlar.eval.run_models import recorded_run_overrides, run_config, trained_nothing
from rlar.export import export_runs, run_policy_weights
from rlar.rollout.sampling import truncation
from rlar.runtime.cache import spec_key
from rlar.runtime.files_read import stamps_hold
from rlar.studies.study import RUN_NAME, Study

log = logging.getLogger(__name__)
Judgement = dict[str, dict]  # "eval/<metric>" -> {"mean", "std", "values"}, as judge.json holds it


def read_or_judge(path: Path, argv: list[str], weights: Path | None = None, settings: dict | None = None
                  ) -> Judgement:
    """The metrics of ``path`` (a ``judge.json``), judged first with ``rlar-eval argv`` if it is not there, lacks
    one of ``JUDGE_METRICS``, is unreadable, is older than ``weights`` (the file of the weights it judges), records
    other ``settings`` than these (a setting it does not record counts as None: a judgement made before evaluations
    honoured ``rollout.top_k`` recorded none), or read cache entries whose content has changed since
    (``cache_entries``: the prior, tokenizer or judge built again under its name to other weights; a judgement that
    recorded none cannot be checked)."""
    record = read_judgement(path) if is_current(path, weights) else {}
    if any(record.get(key) != value for key, value in (settings or {}).items()):
        record = {}
    if record and not stamps_hold(record.get("cache_entries")):
        log.info("judgement %s read cache entries that changed since (or recorded none): judging again", path)
        record = {}
    if not has_every_metric(record.get("metrics", {})):
        run_command(argv)
        record = json.loads(path.read_text())
    return record["metrics"]


def read_judgement(path: Path) -> dict:
    """The record of ``path`` (a ``judge.json``: settings and ``"metrics"``); ``{}`` (judge again), with a warning
    naming it, when it is not a JSON object holding a ``"metrics"`` object (as a judge stopped while writing it leaves
    it)."""
    try:
        record = json.loads(path.read_text())
    except ValueError as e:  # half written, or not UTF-8
        reason = f"not JSON: {e}"
    else:
        if isinstance(record, dict) and isinstance(record.get("metrics"), dict):
            return record
        reason = 'no "metrics" object'
    log.warning("judgement %s is unreadable (%s): judging again", path, reason)
    return {}


def is_current(path: Path, weights: Path | None) -> bool:
    """Whether ``path`` exists and was written after ``weights`` (when given) were."""
    if not path.is_file():
        return False
    return weights is None or weights.stat().st_mtime_ns <= path.stat().st_mtime_ns


def saved_weights(run_dir: Path) -> Path | None:
    """``checkpoints/last.pt``, which every save of the run's weights rewrites (a sharded run's record, which a
    finished run started again leaves as it is); None for a run that trained nothing (it saved no weights)."""
    return None if trained_nothing(run_dir) else run_dir / "checkpoints" / "last.pt"


def has_every_metric(judgement: Judgement) -> bool:
    return all(f"eval/{m}" in judgement for m in JUDGE_METRICS)


def run_judgement(run_dir: Path, n: int, extra: list[str] = ()) -> Judgement:
    """A finished run's final policy under ``n`` eval seeds, at its own sampling settings; judged again when its
    weights were saved after its judgement."""
    extra = recorded_run_overrides(run_dir, list(extra))  # the run was made with the rest
    cfg = run_config(run_dir, extra)  # as rlar-eval reads it: its folder is named by it
    seeds = list(range(cfg.eval.seed, cfg.eval.seed + n))
    out = judgement_dir(run_dir / "eval", cfg, cfg.rollout.cfg_scale, cfg.rollout.temperature, seeds)
    return read_or_judge(out / "judge.json", [str(run_dir), *extra, "--judge", str(n)], saved_weights(run_dir),
                         truncation(cfg.rollout))  # judge.json records it


def prior_judgements(study: Study, n: int, outputs: str | Path, extra: list[str] = ()) -> dict[str, Judgement]:
    """The study's prior under ``n`` eval seeds: ``{"prior": ...}`` unguided (the rollout's guidance scale), and
    ``{"prior, guidance <s>": ...}`` when the study's evaluations also sample under guidance ``s``."""
    cfg = compose_config([*study.overrides, *extra])
    scales = {"prior": cfg.rollout.cfg_scale}
    if cfg.eval.get("guided_cfg_scale") is not None:
        scales[f"prior, guidance {cfg.eval.guided_cfg_scale:g}"] = cfg.eval.guided_cfg_scale
    result = {}
    for label, scale in scales.items():
        # the guided row as the runs' eval_cfg/* sample it: guidance at every position, whatever rollout.cfg_interval
        overrides = [*study.overrides, *extra, *([] if label == "prior" else ["rollout.cfg_interval=null"])]
        row = compose_config(overrides)  # its folder's key: the config it is judged under
        key = spec_key(OmegaConf.to_container(row), length=10)
        out = Path(outputs) / RUN_NAME / "judged" / study.name / f"prior-{key}-cfg{scale:g}-seeds{n}"
        argv = [*overrides, "--judge", str(n), "--cfg-scale", str(scale), "--out", str(out)]
        result[label] = read_or_judge(out / "judge.json", argv, settings=truncation(row.rollout))
    return result


def soup_judgement(study: Study, run_dirs: list[Path], n: int, outputs: str | Path, extra: list[str] = ()
                   ) -> Judgement:
    """The uniform weight soup of ``run_dirs`` (``rlar-export``) under ``n`` eval seeds, with the first run's config
    (its sampling settings). It lands in ``outputs/ablations/soups/<study>/``, keyed by the runs and the time their
    final weights were written, so that a run trained again makes a new soup."""
    written = {d.name: run_policy_weights(d).stat().st_mtime_ns for d in run_dirs}
    folder = Path(outputs) / RUN_NAME / "soups" / study.name / f"soup-{spec_key(written, length=10)}"
    if not (folder / "config.json").is_file():  # written after the weights
        export_runs(run_dirs, folder)
    overrides = [*recorded_run_overrides(run_dirs[0], list(extra)), f"policy.checkpoint={folder}"]
    cfg = run_config(run_dirs[0], overrides)  # what it is judged under: its judgement's folder is keyed by it
    seeds = list(range(cfg.eval.seed, cfg.eval.seed + n))
    out = judgement_dir(folder, cfg, cfg.rollout.cfg_scale, cfg.rollout.temperature, seeds)
    argv = [str(run_dirs[0]), *overrides, "--judge", str(n), "--out", str(out)]
    return read_or_judge(out / "judge.json", argv, settings=truncation(cfg.rollout))


def study_judgements(study: Study, trained: dict[str, list[Path]], untrained: dict[str, Path], outputs: str | Path,
                     extra: list[str] = ()) -> tuple[dict[str, Judgement], dict[str, list[Judgement]],
                                                     dict[str, Judgement]]:
    """``(priors, settings, soups)`` over the study's ``judge`` eval seeds: :func:`prior_judgements` and each
    ``untrained`` setting's one run (its seeds repeat one evaluation of the prior), each ``trained`` setting's runs,
    and with the study's ``soup``, the soup of each trained setting's runs (two or more)."""
    n = study.judge
    priors = prior_judgements(study, n, outputs, extra) | {k: run_judgement(d, n, extra) for k, d in untrained.items()}
    settings = {label: [run_judgement(d, n, extra) for d in dirs] for label, dirs in trained.items()}
    soups = {label: soup_judgement(study, dirs, n, outputs, extra) for label, dirs in trained.items()
             if study.soup and len(dirs) > 1}
    return priors, settings, soups
