"""The config and the models of a finished run (its ``.hydra/config.yaml`` and ``checkpoints/``), or of a config
composed from overrides, for evaluation outside the training loop."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import ConfigKeyError, ValidationError

from rlar.build import build_generator
from rlar.config.rerun import flat
from rlar.config.schemas import RlarConfig
from rlar.config.store import CONF_DIR, compose_config, register_schemas
from rlar.runtime.ema import exported_policy
from rlar.tokenizer.zoo_build import strict_load

# the config keys whose values are paths a run reads (policy.checkpoint, data.root, eval.inception.weights, ...)
PATH_KEYS = ("checkpoint", "path", "root", "eval_root", "eval_path", "model_path", "cache_dir", "feature_cache",
             "weights", "weights_path", "reference", "class_names_file", "token_file")


def is_run_dir(path: str | Path) -> bool:
    return (Path(path) / ".hydra" / "config.yaml").is_file()


def started_folder(run_dir: str | Path) -> Path | None:
    """The folder the run started in (Hydra's ``hydra.runtime.cwd``); None for a run dir without Hydra's record."""
    hydra_file = Path(run_dir) / ".hydra" / "hydra.yaml"
    return Path(OmegaConf.load(hydra_file).hydra.runtime.cwd) if hydra_file.is_file() else None


def anchor_relative_paths(recorded: DictConfig, run_dir: str | Path) -> None:
    """Make absolute each relative path of ``recorded`` (a value of a :data:`PATH_KEYS` key) that is not found from
    the current directory but is from the one the run started in (Hydra's ``hydra.runtime.cwd``): evaluated from
    another directory, the run reads what it read."""
    started_in = started_folder(run_dir)
    if started_in is None:
        return
    for key, value in flat(OmegaConf.to_container(recorded, resolve=False)).items():
        if (key.rsplit(".", 1)[-1] in PATH_KEYS and isinstance(value, str) and "${" not in value
                and not Path(value).expanduser().is_absolute() and not Path(value).exists()
                and (started_in / value).exists()):
            OmegaConf.update(recorded, key, str(started_in / value))


def run_config(run_dir: str | Path | None, overrides: list[str]) -> DictConfig:
    """A run's recorded config with ``overrides`` (``key=value`` of its own keys: :func:`sets_a_recorded_value`)
    applied, or, without a run dir, the config that ``python -m rlar.run OVERRIDES`` composes. Always on one process
    (``hardware.strategy=none``). A ``ValueError`` names an override a recorded run cannot take."""
    if run_dir is None:
        cfg = compose_config(overrides)
    else:
        register_schemas()
        recorded = OmegaConf.load(Path(run_dir) / ".hydra" / "config.yaml")
        anchor_relative_paths(recorded, run_dir)
        for override in overrides:
            if not sets_a_recorded_value(override, recorded):
                raise ValueError(f"'{override}': a recorded run takes key=value overrides of its own config (e.g. "
                                 "hardware.device=cuda), not a new option of a group, an added or removed key or "
                                 "a Hydra setting: its record already holds what those made")
        try:
            cfg = OmegaConf.merge(OmegaConf.structured(RlarConfig), recorded, OmegaConf.from_dotlist(overrides))
        except (ConfigKeyError, ValidationError) as e:
            raise ValueError(f"{e.full_key}: {e.msg.splitlines()[0]}, in the config recorded in {run_dir} with "
                             f"the overrides {overrides}") from e
    cfg.hardware.strategy = "none"
    return cfg


def sets_a_recorded_value(override: str, recorded: DictConfig) -> bool:
    """Whether ``override`` sets a value of a recorded run's config (``hardware.device=cuda``), rather than shaping
    how a run is composed: a group's option (``reward=coverage``), an added or removed key (``+k=v``, ``~k``), or
    Hydra (``hydra.run.dir=...``, ``hydra/launcher=...``)."""
    key, is_set, _ = override.partition("=")
    if not is_set or key.startswith(("+", "~")) or "/" in key or key.split(".", 1)[0] == "hydra":
        return False
    is_group = (CONF_DIR / key).is_dir() or OmegaConf.is_dict(recorded.get(key))  # experiment=..., text_encoder=...
    return "." in key or not is_group


def recorded_run_overrides(run_dir: str | Path, overrides: list[str]) -> list[str]:
    """The ``overrides`` a recorded run takes (:func:`sets_a_recorded_value`) of those it was run with (a study's
    command line, given to every run and then to their judgement): the others are in its record already."""
    recorded = OmegaConf.load(Path(run_dir) / ".hydra" / "config.yaml")
    return [o for o in overrides if sets_a_recorded_value(o, recorded)]


def trained_nothing(run_dir: str | Path) -> bool:
    """Whether the run trained 0 iterations (``train.iterations=0``, its summary says so): it saved no weights, and
    its policy is the one its config builds (the prior). Not once it has saved weights since that summary."""
    summary = Path(run_dir) / "summary.json"
    if not summary.is_file() or json.loads(summary.read_text()).get("iterations") != 0:
        return False
    return not saved_since_summary(run_dir)


def saved_since_summary(run_dir: str | Path) -> bool:
    """Whether ``checkpoints/last.pt`` was written after ``summary.json``: the run was extended to more iterations and
    stopped before its new end, so its summary describes older weights than its checkpoint holds (a finished run
    writes its summary after its last save)."""
    summary, weights = Path(run_dir) / "summary.json", Path(run_dir) / "checkpoints" / "last.pt"
    return summary.is_file() and weights.is_file() and weights.stat().st_mtime_ns > summary.stat().st_mtime_ns


def build_models(cfg: DictConfig, device, run_dir: str | Path | None = None):
    """``(data, tokenizer, policy)`` of ``cfg`` on ``device``: the policy as ``policy.checkpoint`` (or the cached
    prior) gives it, then, with ``run_dir`` and no ``policy.checkpoint`` override, the run's fine-tuned weights (none
    for a run that trained nothing: :func:`trained_nothing`)."""
    data = instantiate(cfg.data)
    tokenizer, policy, _ = build_generator(cfg, data, device)
    if run_dir is not None and not trained_nothing(run_dir):
        strict_load(policy, exported_policy(Path(run_dir) / "checkpoints"), f"the policy of {run_dir}")
    return data, tokenizer, policy.eval().requires_grad_(False)


def reads_run_weights(run_dir: str | Path | None, overrides: list[str]) -> str | Path | None:
    """The run dir whose fine-tuned weights are loaded: none when ``policy.checkpoint=...`` is overridden."""
    return None if any(o.startswith("policy.checkpoint=") for o in overrides) else run_dir


def judged_weights(cfg: DictConfig, run_dir: str | Path | None) -> dict:
    """``{"run", "checkpoint"}``, absolute paths, to record beside the metrics: the run dir whose weights are
    evaluated (:func:`reads_run_weights`), else ``policy.checkpoint`` (both None: the prior the config builds)."""
    checkpoint = cfg.policy.get("checkpoint") if run_dir is None else None
    return {"run": None if run_dir is None else str(Path(run_dir).expanduser().resolve()),
            "checkpoint": str(Path(checkpoint).expanduser().resolve()) if checkpoint else None}


def checkpoint_tag(checkpoint: str) -> str:
    """``<stem>-<8 hex digits>``: a folder name of a checkpoint, its stem and a hash of its absolute path, so that two
    checkpoints of one name (``.../a/last.pt``, ``.../b/last.pt``) get two folders."""
    return f"{Path(checkpoint).stem}-{hashlib.sha256(checkpoint.encode()).hexdigest()[:8]}"
