"""Hydra entry point: ``python -m rlar.run [overrides]`` or ``rlar-run``. Returns the final mean evaluation
reward, so a sweeper can optimize it."""

from __future__ import annotations

import logging
import sys

import hydra
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig

from rlar.config import CONF_DIR, register_schemas
from rlar.loop import train_rl_loop
from rlar.validate import ConfigError, check_config

log = logging.getLogger(__name__)
register_schemas()


# an absolute path: a relative one would be looked up as a Python package when run as the `rlar-run` script
@hydra.main(version_base="1.3", config_path=str(CONF_DIR), config_name="config")
def main(cfg: DictConfig) -> float:
    try:
        check_config(cfg)
    except ConfigError as e:
        sys.exit(f"config error: {e}")
    output_dir = HydraConfig.get().runtime.output_dir
    summary = train_rl_loop(cfg, output_dir)
    print(f"eval reward (mean -L2 on held-out digits): prior {summary['eval_reward_before']:.5f} "
          f"-> after RL {summary['eval_reward_after']:.5f}")
    print(f"outputs: {output_dir} (summary.json, tensorboard/, checkpoints/)")
    return summary["eval_reward_after"]


if __name__ == "__main__":
    main()
