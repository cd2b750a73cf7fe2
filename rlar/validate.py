"""Checks that need no work done: run before anything is trained or built."""

from __future__ import annotations

from pathlib import Path

from hydra.errors import InstantiationException
from hydra.utils import instantiate
from omegaconf import DictConfig

from rlar.rollout import MODES as ROLLOUT_MODES


class ConfigError(ValueError):
    """A config value that cannot work; the message names the key, the value and the fix."""


def check_config(cfg: DictConfig) -> None:
    """Raise ``ConfigError`` naming the bad value and the fix."""
    for group in ("algorithm", "hardware"):  # cheap objects whose constructors check their values
        try:
            instantiate(cfg[group])
        except InstantiationException as e:
            raise ConfigError(str(e.__cause__ or e)) from e
    if cfg.rollout.mode not in ROLLOUT_MODES:
        raise ConfigError(f"rollout.mode={cfg.rollout.mode!r} is not available; choose one of {ROLLOUT_MODES}")
    r = cfg.rollout
    if (r.mode == "prefix") != (r.prefix_len > 0):
        raise ConfigError(f"rollout.prefix_len={r.prefix_len} with rollout.mode={r.mode!r}: mode=prefix needs "
                          "prefix_len >= 1, and the other modes take no prefix (set prefix_len=0)")
    if r.cfg_interval is not None and not (len(r.cfg_interval) == 2 and 0 <= r.cfg_interval[0] < r.cfg_interval[1]):
        raise ConfigError(f"rollout.cfg_interval must be [lo, hi) with 0 <= lo < hi, got {list(r.cfg_interval)}")
    if cfg.rollout.temperature <= 0:
        raise ConfigError(f"rollout.temperature must be > 0, got {cfg.rollout.temperature}")
    codebook = cfg.tokenizer.get("codebook_size")
    if codebook is not None and cfg.policy.vocab_size != codebook:
        raise ConfigError(
            f"policy.vocab_size={cfg.policy.vocab_size} does not match the tokenizer's codebook "
            f"(tokenizer.codebook_size={codebook}); set policy.vocab_size={codebook} or leave it as "
            "${tokenizer.codebook_size}"
        )
    for key in ("tokenizer.checkpoint", "policy.checkpoint"):
        group, name = key.split(".")
        path = cfg[group].get(name)
        if path and not Path(path).expanduser().is_file():
            raise ConfigError(f"{key}='{path}' does not exist; give the path of a saved checkpoint (for the "
                              f"embedded {group}, {key}=null trains one and caches it)")
    g = cfg.algorithm.num_generations
    sequences = cfg.train.batch_size * g
    if sequences % cfg.algorithm.minibatch_size and cfg.algorithm.minibatch_size < sequences:
        raise ConfigError(f"train.batch_size*num_generations={cfg.train.batch_size * g} sequences do not split into "
                         f"minibatches of algorithm.minibatch_size={cfg.algorithm.minibatch_size}")
    for key in ("train.iterations", "train.batch_size", "train.checkpoint_every", "eval.every"):
        group, name = key.split(".")
        if cfg[group][name] < 1:
            raise ConfigError(f"{key} must be >= 1, got {cfg[group][name]}")
