"""Hydra entry point: ``python -m rlar.run [overrides]`` or ``rlar-run``. Returns the final mean evaluation
reward, so a sweeper can optimize it."""

from __future__ import annotations

import logging
import sys

import hydra
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig

from rlar.config.rerun import check_rerun
from rlar.config.store import CONF_DIR, register_schemas
from rlar.config.validate import ConfigError, check_config
from rlar.eval.evaluate import ATTRIBUTE_METRICS, JUDGE_METRICS, summary_key
from rlar.loop import train_rl_loop
from rlar.runtime.distributed import env_rank

log = logging.getLogger(__name__)
register_schemas()


# an absolute path: a relative one would be looked up as a Python package when run as the `rlar-run` script
@hydra.main(version_base="1.3", config_path=str(CONF_DIR), config_name="config")
def main(cfg: DictConfig) -> float:
    hydra = HydraConfig.get()
    output_dir = hydra.runtime.output_dir
    try:
        check_config(cfg)
        if env_rank() == 0:
            check_rerun(cfg, output_dir, hydra.output_subdir, list(hydra.job.config.override_dirname.exclude_keys))
    except ConfigError as e:
        sys.exit(f"config error: {e}")
    summary = train_rl_loop(cfg, output_dir)
    if env_rank() != 0:
        return summary["eval_reward_after"]
    reward = hydra.runtime.choices.get("reward")
    print(f"eval reward (reward={reward}, mean over the held-out split): prior {summary['eval_reward_before']:.5f} "
          f"-> after RL {summary['eval_reward_after']:.5f}")
    for metric in (*JUDGE_METRICS, *ATTRIBUTE_METRICS):
        key = summary_key(metric)
        if f"{key}_before" in summary:
            print(f"eval/{metric}: prior {summary[f'{key}_before']:.4g} -> after RL {summary[f'{key}_after']:.4g}")
    print(f"outputs: {output_dir} (summary.json, tensorboard/, checkpoints/)")
    return summary["eval_reward_after"]


def rank_overrides() -> list[str]:
    """Under torchrun every rank composes the config; only rank 0 writes Hydra's files (.hydra/, the log file).
    The run directory is the same on every rank, and the loop takes rank 0's."""
    return [] if env_rank() == 0 else ["hydra.output_subdir=null", "hydra/job_logging=stdout"]


def cli() -> None:
    sys.argv.extend(rank_overrides())
    main()


if __name__ == "__main__":
    cli()
