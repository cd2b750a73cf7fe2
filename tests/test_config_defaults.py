"""One definition per option: what an option composes to is what its object is built with, and no rlar/conf/ file
repeats a default its schema already holds."""

from __future__ import annotations

import dataclasses
import inspect
from dataclasses import asdict, fields, is_dataclass

import pytest
import yaml
from hydra.utils import _locate, instantiate
from omegaconf import MISSING, OmegaConf

from rlar.config.schemas import from_options
from rlar.config.store import CONF_DIR, SCHEMAS, compose_config
from rlar.policy.schemas import POLICY_SCHEMAS
from rlar.tokenizer.schemas import DigitsVQSchema

GROUPS = ("algorithm", "data", "hardware", "logger", "policy", "reward", "scheduler", "text_encoder", "tokenizer")
# options with settings, built here without downloads or training (the others need weights, files or a trained
# model; psnr, sharpness, contrast and saturation have no settings)
CPU_BUILT = [("algorithm", "grpo"), ("algorithm", "reinforce"), ("algorithm", "ppo"), ("algorithm", "cca"),
             ("hardware", "cpu"),
             ("logger", "tensorboard"), ("logger", "wandb"), ("data", "digits"), ("reward", "l1"), ("reward", "l2"),
             ("reward", "ssim"), ("reward", "efficiency"), ("text_encoder", "embedded")]


@pytest.mark.parametrize("group,option", CPU_BUILT)
def test_built_object_has_the_composed_values(group, option):
    composed = compose_config([f"{group}={option}"])[group]
    built = instantiate(composed)
    settings = OmegaConf.to_container(composed, resolve=True)
    settings.pop("_target_")
    assert settings, f"{group}={option} composes no option to compare"
    for name, value in settings.items():
        assert getattr(built, name) == value, f"{group}={option}.{name}: built {getattr(built, name)!r}"


def test_reinforce_generations_are_the_ones_that_run():
    assert instantiate(compose_config(["algorithm=reinforce"]).algorithm).num_generations == 8


@pytest.mark.parametrize("reward", ["efficiency", "perceptual_efficiency"])
def test_the_step_reward_falls_to_zero_at_the_schedules_step_cap(reward):
    cfg = compose_config(["experiment=arpg_schedule", f"reward={reward}", "schedule.max_steps=12"])
    node = cfg.reward if reward == "efficiency" else cfg.reward.components.efficiency
    assert instantiate(node).max_steps == 12


@pytest.mark.parametrize("policy", sorted(POLICY_SCHEMAS))
def test_policy_builder_reads_the_composed_options(policy):
    """The builders take their options through the schema: every composed value reaches the spec unchanged."""
    composed = compose_config([f"policy={policy}"]).policy
    settings = OmegaConf.to_container(composed, resolve=True)
    spec = from_options(POLICY_SCHEMAS[policy], {k: v for k, v in settings.items() if k != "_target_"})
    assert asdict(spec) == settings


def test_tokenizer_builder_reads_the_composed_options():
    settings = OmegaConf.to_container(compose_config([]).tokenizer, resolve=True)
    spec = from_options(DigitsVQSchema, {k: v for k, v in settings.items() if k != "_target_"})
    assert asdict(spec) == settings


def schema_of(entry: str):
    """``/schema/<group>/<name>@<package>`` -> (the schema's defaults, the package path in the option)."""
    path, _, package = entry.partition("@")
    _, _, group, name = path.split("/")
    node = OmegaConf.structured(SCHEMAS[group][name])
    return node, "" if package == "_here_" else package


def repeated_defaults(written, defaults, path=""):
    """Keys of ``written`` (an option file's values) equal to the schema's ``defaults`` at the same place."""
    found = []
    for key, value in written.items():
        if key not in defaults:
            continue
        default = defaults[key]
        where = f"{path}{key}"
        if isinstance(value, dict) and OmegaConf.is_dict(default):
            found += repeated_defaults(value, default, f"{where}.")
        elif not OmegaConf.is_missing(defaults, key) and value == OmegaConf.to_container(
                OmegaConf.create({"v": default}))["v"]:
            found.append(where)
    return found


OPTION_FILES = [p for g in GROUPS for p in sorted((CONF_DIR / g).glob("*.yaml"))]


@pytest.mark.parametrize("path", OPTION_FILES, ids=lambda p: f"{p.parent.name}/{p.stem}")
def test_option_files_do_not_repeat_their_schema(path):
    written = yaml.safe_load(path.read_text())
    defaults = [e for e in written.pop("defaults") if isinstance(e, str) and e != "_self_"]
    entries = [e for e in defaults if e.startswith("/schema/")]
    options = [e.split("@")[0] for e in defaults if not e.startswith("/")]  # options of its group it extends
    assert entries or options, f"{path} extends no schema"
    assert all((path.parent / f"{option}.yaml").is_file() for option in options)  # each is itself checked here
    repeated = []
    for entry in entries:
        defaults, package = schema_of(entry)
        part = written
        for key in filter(None, package.split(".")):
            part = part.get(key, {})
        repeated += [f"{package}.{k}" if package else k for k in repeated_defaults(part, defaults)]
    assert not repeated, f"{path.relative_to(CONF_DIR)} repeats its schema's defaults: {repeated}"


def test_schema_fields_are_the_objects_fields():
    """An algorithm's or the hardware's schema is derived from the class: the same fields, nothing else."""
    for group, option in [("algorithm", "grpo"), ("algorithm", "reinforce"), ("algorithm", "ppo"),
                          ("algorithm", "cca"), ("hardware", "hardware")]:
        schema = SCHEMAS[group][option]
        target = schema.__dataclass_fields__["_target_"].default
        module, _, name = target.rpartition(".")
        cls = getattr(__import__(module, fromlist=[name]), name)
        assert is_dataclass(cls)
        assert [f.name for f in fields(schema)] == ["_target_", *(f.name for f in fields(cls) if f.init)]


def schema_targets():
    """Every registered schema whose ``_target_`` is a plain class or function (dataclass targets are their own
    schema), as ``(group/option, schema)``."""
    for group, options in SCHEMAS.items():
        for name, schema in options.items():
            target = next((f.default for f in fields(schema) if f.name == "_target_"), None)
            if isinstance(target, str) and not is_dataclass(_locate(target)):
                yield pytest.param(schema, id=f"{group}/{name}")


@pytest.mark.parametrize("schema", list(schema_targets()))
def test_a_constructor_default_never_disagrees_with_its_schema(schema):
    """Where a class or builder also gives a parameter a default (for direct Python use), it is the schema's."""
    target = _locate(next(f.default for f in fields(schema) if f.name == "_target_"))
    params = inspect.signature(target).parameters
    for field in fields(schema):
        param = params.get(field.name)
        unset = field.default is dataclasses.MISSING and field.default_factory is dataclasses.MISSING
        if param is None or param.default is inspect.Parameter.empty or unset or field.default is MISSING:
            continue
        default = field.default_factory() if field.default is dataclasses.MISSING else field.default
        given = list(param.default) if isinstance(param.default, tuple) else param.default  # YAML has no tuples
        assert given == default, f"{schema.__name__}.{field.name}: {default!r}, {target}: {param.default!r}"
