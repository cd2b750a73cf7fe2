"""Building a config's reward with one dataset: every component that reads the run's data (``data: ${data}``)
is handed the same object, so a mix of three classifier rewards lists and decodes the data once, not three times."""

from __future__ import annotations

from typing import Any

from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf

from rlar.contracts import Reward
from rlar.data.batches import ImageData
from rlar.reward.scoring import require_reward


def build_reward(cfg: DictConfig, data: ImageData | None = None) -> Reward:
    """``cfg.reward``, its ``data`` nodes equal to ``cfg.data`` replaced by ``data`` (built here, once, when None
    and some component reads it). A component given other data builds its own."""
    reward = OmegaConf.to_container(cfg.reward, resolve=True)
    run_data = OmegaConf.to_container(cfg.data, resolve=True)
    if data is None and reads_data(reward, run_data):
        data = instantiate(cfg.data)
    return require_reward(instantiate(with_data(reward, run_data, data)), f"reward (_target_: {reward['_target_']})")


def reads_run_data(cfg: DictConfig) -> bool:
    """Whether some component of ``cfg.reward`` reads the run's data (``${data}``)."""
    return reads_data(OmegaConf.to_container(cfg.reward, resolve=True), OmegaConf.to_container(cfg.data, resolve=True))


def reads_data(node: Any, run_data: dict | None) -> bool:
    """Whether some ``data`` entry of the config tree ``node`` is ``run_data`` (None: any data, its own too)."""
    if isinstance(node, dict):
        return any((key == "data" and run_data in (None, value)) or reads_data(value, run_data)
                   for key, value in node.items())
    return isinstance(node, list) and any(reads_data(value, run_data) for value in node)


def with_data(node: Any, run_data: dict, data: ImageData | None) -> Any:
    """The config tree ``node`` with every ``data`` entry equal to ``run_data`` replaced by ``data``."""
    if isinstance(node, dict):
        return {key: data if key == "data" and value == run_data else with_data(value, run_data, data)
                for key, value in node.items()}
    if isinstance(node, list):
        return [with_data(value, run_data, data) for value in node]
    return node
