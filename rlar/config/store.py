"""Hydra's config store: every option's schema under ``schema/<group>/<name>``, and the composer.

Each YAML option starts from its schema (``defaults: [/schema/<group>/<name>@_here_, _self_]``), so a typo
(``algorithm.num_generation=4``) or a wrong type (``train.iterations=ten``) fails before any work. An object that
is itself a dataclass (an algorithm, the hardware) is its own schema: :func:`target_schema` adds ``_target_``.
"""

from __future__ import annotations

import dataclasses
import functools
import typing
from pathlib import Path

from hydra import compose, initialize_config_dir
from hydra.core.config_store import ConfigStore
from omegaconf import DictConfig

from rlar.algorithm.algorithms import GRPO, PPO, Reinforce
from rlar.algorithm.cca import CCA
from rlar.config.dir_name import register_dir_name_resolver
from rlar.config.schemas import RlarConfig
from rlar.data.schemas import DATA_SCHEMAS
from rlar.policy.schemas import POLICY_SCHEMAS
from rlar.reward.remote.schema import REMOTE_SCHEMAS
from rlar.reward.schemas import REWARD_SCHEMAS
from rlar.runtime.hardware import Hardware
from rlar.runtime.schemas import SCHEDULER_SCHEMAS, MultiLoggerSchema, TensorBoardSchema, WandbSchema
from rlar.text.schemas import TEXT_ENCODER_SCHEMAS
from rlar.tokenizer.schemas import TOKENIZER_SCHEMAS

CONF_DIR = Path(__file__).resolve().parents[1] / "conf"  # rlar/conf: shipped in the package


def target_schema(cls: type) -> type:
    """The schema of the dataclass ``cls``: ``_target_`` (``cls`` itself), then the fields its constructor takes,
    with their types and defaults (a field with ``init=False`` is state, not an option)."""
    hints = typing.get_type_hints(cls)
    options = [(f.name, hints[f.name], dataclasses.field(default=f.default, default_factory=f.default_factory))
               for f in dataclasses.fields(cls) if f.init]
    target = ("_target_", str, dataclasses.field(default=f"{cls.__module__}.{cls.__qualname__}"))
    schema = dataclasses.make_dataclass(f"{cls.__name__}Schema", [target, *options])
    schema.__module__ = cls.__module__
    return schema


SCHEMAS = {
    "data": DATA_SCHEMAS,
    "tokenizer": TOKENIZER_SCHEMAS,
    "policy": POLICY_SCHEMAS,
    "algorithm": {"grpo": target_schema(GRPO), "reinforce": target_schema(Reinforce), "ppo": target_schema(PPO),
                  "cca": target_schema(CCA)},
    "reward": {**REWARD_SCHEMAS, **REMOTE_SCHEMAS},
    "hardware": {"hardware": target_schema(Hardware)},
    "logger": {"tensorboard": TensorBoardSchema, "wandb": WandbSchema, "multi": MultiLoggerSchema},
    "scheduler": SCHEDULER_SCHEMAS,
    "text_encoder": TEXT_ENCODER_SCHEMAS,
}


@functools.cache
def register_schemas() -> None:
    """Store the whole config's schema as ``rlar_schema`` and every option's as ``schema/<group>/<name>``; register
    the run directory's name resolver (``rlar.config.dir_name``). Once per process: the store is a singleton."""
    register_dir_name_resolver()
    store = ConfigStore.instance()
    store.store(name="rlar_schema", node=RlarConfig)
    for group, options in SCHEMAS.items():
        for name, node in options.items():
            store.store(group=f"schema/{group}", name=name, node=node)


def compose_config(overrides: list[str] = ()) -> DictConfig:
    """The config ``python -m rlar.run`` would see, composed without running (for tests, benchmarks, notebooks)."""
    register_schemas()
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        return compose("config", overrides=list(overrides))
