"""Hydra entry point: ``python -m rlar.run [overrides]`` or ``rlar-run``. Returns the last evaluation's
``optimized_metric`` (the eval reward unless set), so a sweeper can optimize it."""

from __future__ import annotations

import sys

import hydra
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig

from rlar.config.rerun import check_rerun
from rlar.config.store import CONF_DIR, register_schemas
from rlar.config.validate import check_config, exit_on_config_error
from rlar.eval.evaluate import ATTRIBUTE_METRICS, JUDGE_METRICS, summary_key
from rlar.loop import fine_tune
from rlar.reward.mixture import zscored
from rlar.runtime.distributed import env_rank
from rlar.runtime.user_modules import importable

register_schemas()


# an absolute path: a relative one would be looked up as a Python package when run as the `rlar-run` script
@hydra.main(version_base="1.3", config_path=str(CONF_DIR), config_name="config")
def main(cfg: DictConfig) -> float:
    hydra = HydraConfig.get()
    output_dir = hydra.runtime.output_dir
    with exit_on_config_error():
        check_config(cfg)
        if env_rank() == 0:
            check_rerun(cfg, output_dir, hydra.output_subdir, list(hydra.job.config.override_dirname.exclude_keys))
    summary = fine_tune(cfg, output_dir)
    if env_rank() != 0:
        return optimized_value(summary, cfg.optimized_metric)
    print("\n".join(closing_lines(summary, hydra.runtime.choices.get("reward"), zscored(cfg.reward))))
    print(f"outputs: {output_dir} (summary.json, tensorboard/, checkpoints/)")
    return optimized_value(summary, cfg.optimized_metric)


def optimized_value(summary: dict, metric: str) -> float:
    """The last evaluation's ``metric`` (``eval/fd`` -> ``eval_fd_after``); a metric the run did not measure (a
    parallel decoder's ``eval/steps``, the prompts' ``eval/attr/*``) exits naming it, with summary.json written."""
    group, _, name = metric.partition("/")
    key = f"{summary_key(name, group)}_after"
    if key not in summary:
        sys.exit(f"optimized_metric={metric} was not measured by this run (its summary.json has "
                 f"{sorted(k.removesuffix('_after') for k in summary if k.endswith('_after'))})")
    return summary[key]


def closing_lines(summary: dict, reward: str, normalized: bool) -> list[str]:
    """A finished run's results, prior -> after RL: the eval reward, each term's own mean for a mix (a mix z-scored
    over the batch has a mean of 0 by construction), and the judge's metrics."""
    lines = [f"eval reward (reward={reward}, mean over the held-out split): prior {summary['eval_reward_before']:.5f} "
             f"-> after RL {summary['eval_reward_after']:.5f}"
             + (" (z-scored: 0 by construction where every term is finite; its terms below)" if normalized else "")]
    first, last = summary["history"][0], summary["history"][-1]
    lines += [f"{tag}: prior {first[tag]:.4g} -> after RL {last[tag]:.4g}"
              for tag in first if tag.startswith("eval/reward/") and tag in last]
    keys = {metric: summary_key(metric) for metric in (*JUDGE_METRICS, *ATTRIBUTE_METRICS)}
    lines += [f"eval/{metric}: prior {summary[f'{key}_before']:.4g} -> after RL {summary[f'{key}_after']:.4g}"
              for metric, key in keys.items() if f"{key}_before" in summary]
    return lines


def rank_overrides() -> list[str]:
    """Under torchrun every rank composes the config; only rank 0 writes Hydra's files (.hydra/, the log file).
    The run directory is the same on every rank, and the loop takes rank 0's."""
    return [] if env_rank() == 0 else ["hydra.output_subdir=null", "hydra/job_logging=stdout"]


def cli() -> None:
    """The console script ``rlar-run``: ``python -m rlar.run``'s, with the current folder's modules importable."""
    importable()
    sys.argv.extend(rank_overrides())
    main()


if __name__ == "__main__":
    cli()
