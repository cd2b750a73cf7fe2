"""A re-run of an existing run directory must compute what the recorded run computed.

The first run copies Hydra's record (``.hydra/``) to ``checkpoints/hydra/``. A later run in the same directory
(Hydra has already written its own ``.hydra/``) compares its config with that copy: equal, up to the keys kept out
of the run directory's name (``hydra.job.config.override_dirname.exclude_keys``, with their sub-keys), it resumes
and refreshes the copy; different, the recorded ``.hydra/`` is written back and the run is refused with the keys
that differ. A key the recorded config lacks that is an option added to rlar since (``ADDED``) counts as equal where it
holds the value that computes what the code before it did.
"""

from __future__ import annotations

import datetime
import logging
import os
import shutil
from pathlib import Path

from omegaconf import DictConfig, OmegaConf

from rlar.config.store import CONF_DIR
from rlar.config.validate import ConfigError
from rlar.runtime.atomic_files import atomic_path
from rlar.runtime.run_lock import RunDirLocked, run_lock

log = logging.getLogger(__name__)
RECORD = Path("checkpoints") / "hydra"
# what a run (and rlar-eval of it) writes in its folder; the log stays, Hydra has opened it for this run
REPLACED = ("checkpoints", "tensorboard", "wandb", "summary.json", "eval")
# options added to rlar since runs were recorded without them, each with the value that computes what the code before
# it did: a run recorded without the key resumes where it holds that value (a new option adds its entry here)
ADDED = {
    "algorithm.buffer_size": None, "algorithm.value_clip": None, "algorithm.importance_sampling_level": "token",
    "algorithm.delta": None, "algorithm.target_kl": None, "algorithm.kl_penalty": "loss",
    "algorithm.sampler_correction_cap": None, "algorithm.top_entropy_quantile": 1.0, "algorithm.group_by": "item",
    "algorithm.std_eps": 1e-8, "algorithm.value_detach": False,
}

# keys compared although a group they are in is free: a switch of hardware=... moves a run to another machine, while
# its seed draws its data order (replayed on resume from the seed, not saved) and its precision what it computes
# (hardware=cuda's bf16 going on with a CPU run's fp32 is refused; see check_rerun for how to go on)
COMPARED = ("hardware.seed", "hardware.precision")


def flat(cfg: dict, prefix: str = "") -> dict:
    """``{"a": {"b": 1}}`` -> ``{"a.b": 1}``."""
    out = {}
    for key, value in cfg.items():
        if isinstance(value, dict) and value:
            out.update(flat(value, f"{prefix}{key}."))
        else:
            out[f"{prefix}{key}"] = value
    return out


def differing_keys(recorded: dict, current: dict, free: list[str], left_off: frozenset | set = frozenset()
                   ) -> list[str]:
    """The keys whose values differ between two configs, other than ``free`` ones and their sub-keys (but
    :data:`COMPARED`), and the ``left_off`` keys (absent from ``recorded``)."""
    a, b = flat(recorded), flat(current)
    return sorted(k for k in (a.keys() | b.keys()) - left_off
                  if a.get(k, "<missing>") != b.get(k, "<missing>")
                  and (k in COMPARED or not any(k == f or k.startswith(f + ".") for f in free)))


def added_options_left_off(recorded: dict, current: dict) -> set[str]:
    """The keys ``current`` has and the recorded config lacks that are options added to rlar since (:data:`ADDED`)
    holding the value that computes what the code before them did."""
    now = flat(current)
    return {k for k in now.keys() - flat(recorded).keys() if k in ADDED and now[k] == ADDED[k]}


def log_dirs(logger: DictConfig | None) -> list[str]:
    """The folders a logger config writes in the run directory: each relative ``log_dir`` (``logger=multi``: of every
    logger in it) that stays inside it, below it and apart from Hydra's record."""
    found = []

    def visit(node) -> None:
        if isinstance(node, dict):
            for key, value in node.items():
                if key == "log_dir" and isinstance(value, str):
                    found.append(value)
                visit(value)

    if logger is not None:
        visit(OmegaConf.to_container(logger, resolve=True))
    return [d for d in found if Path(d).parts and not Path(d).is_absolute() and ".." not in Path(d).parts
            and Path(d).parts[0] not in (".hydra", "replaced")]


def set_aside(out: Path, logged: list[str] = ()) -> Path | None:
    """Move a run's outputs (:data:`REPLACED`, and the ``logged`` folders of its logger: :func:`log_dirs`) from
    ``out`` into ``out/replaced/<UTC time>/`` (each at its own relative path); returns that folder, or None when
    there was nothing to move. The caller holds the run lock (:func:`check_rerun`)."""
    found = [path for path in dict.fromkeys(out / name for name in (*REPLACED, *logged)) if path.exists()]
    found = [p for p in found if not any(q != p and q in p.parents for q in found)]  # a folder inside one moved
    if not found:
        return None
    folder = out / "replaced" / datetime.datetime.now(datetime.timezone.utc).strftime("%Y%m%dT%H%M%S.%fZ")
    folder.mkdir(parents=True)
    for path in found:
        target = folder / path.relative_to(out)
        target.parent.mkdir(parents=True, exist_ok=True)
        path.rename(target)
    log.warning("resume=false: the outputs of the run that was in %s are kept in %s", out, folder)
    return folder


def check_rerun(cfg: DictConfig, out: str | Path, hydra_subdir: str | None, free: list[str]) -> None:
    """Refuse (``ConfigError``) a resumed run whose config differs from the one recorded in ``out``; with
    ``resume=false``, set the earlier run's outputs aside (:func:`set_aside`: nothing of it is resumed, nothing is
    lost); then record this run's ``.hydra/`` (``hydra_subdir``; without one, its config) as the one later runs
    compare with. All of it under the run lock: while another process trains in ``out``, ``RunDirLocked`` is raised
    before anything there changes, and the record that process runs under is written back over the ``.hydra/``
    Hydra wrote for this command (which ``rlar-eval`` and ``rlar-export`` read)."""
    out = Path(out)
    record, hydra_dir = out / RECORD, out / hydra_subdir if hydra_subdir else None
    try:
        with run_lock(out):
            compare_and_record(cfg, out, record, hydra_dir, free)
    except RunDirLocked:
        if hydra_dir is not None and (record / "config.yaml").is_file():
            copy_record(record, hydra_dir)
        raise


def compare_and_record(cfg: DictConfig, out: Path, record: Path, hydra_dir: Path | None, free: list[str]) -> None:
    """:func:`check_rerun`'s work, its lock held."""
    if not cfg.resume:
        set_aside(out, log_dirs(cfg.get("logger")))
    if cfg.resume and (out / "checkpoints" / "last.pt").is_file() and (record / "config.yaml").is_file():
        recorded = OmegaConf.to_container(OmegaConf.load(record / "config.yaml"), resolve=False)
        current = OmegaConf.to_container(cfg, resolve=False)
        keys = differing_keys(recorded, current, free, added_options_left_off(recorded, current))
        if keys:
            if hydra_dir is not None:
                copy_record(record, hydra_dir)
            precision = ""
            if "hardware.precision" in keys:  # named in the directory when overridden: the run's own must be given
                precision = (f" (to go on in the run's precision: hardware.precision="
                             f"{flat(recorded).get('hardware.precision')} hydra.run.dir={out})")
            raise ConfigError(f"{out} holds a run with another config: {', '.join(keys)} differ from the recorded "
                              f"{record / 'config.yaml'}{precision}; run with resume=false to start over there, or "
                              "give this run another name (name=...) or directory")
    if hydra_dir is not None and (hydra_dir / "config.yaml").is_file():
        copy_record(hydra_dir, record)
    elif hydra_dir is None:  # hydra.output_subdir=null: no .hydra/ to copy, but later runs still compare
        with atomic_path(record / "config.yaml") as tmp:
            OmegaConf.save(cfg, tmp)


def copy_record(source: Path, target: Path) -> None:
    """Copy the config record (Hydra's ``.hydra/`` files) from ``source`` to ``target``, each file whole (a
    temporary file and a rename): a copy cut short (a full disk) leaves the old file, never half a config that every
    later run of the command would be refused against."""
    for file in sorted(p for p in source.rglob("*") if p.is_file()):
        with atomic_path(target / file.relative_to(source)) as tmp:
            shutil.copyfile(file, tmp)


def name_free_keys() -> list[str]:
    """The keys kept out of a run directory's name (``rlar/conf/config.yaml``'s ``exclude_keys``), which a re-run
    may change."""
    return list(OmegaConf.load(CONF_DIR / "config.yaml").hydra.job.config.override_dirname.exclude_keys)


def record_config(cfg: DictConfig, out: str | Path) -> None:
    """For a run started from Python (``rlar.loop.train_rl_loop``), what ``rlar-run`` and its Hydra do: write
    ``out/.hydra/config.yaml`` and, of Hydra's ``hydra.yaml``, where the run started (``hydra.runtime.cwd``, which
    anchors its relative paths) and its folder (which ``rlar-eval`` and ``rlar-export`` read), then
    :func:`check_rerun` against the run already in ``out``."""
    hydra_dir = Path(out) / ".hydra"
    hydra_dir.mkdir(parents=True, exist_ok=True)
    OmegaConf.save(cfg, hydra_dir / "config.yaml")
    runtime = {"cwd": os.getcwd(), "output_dir": str(Path(out).absolute())}
    OmegaConf.save({"hydra": {"runtime": runtime}}, hydra_dir / "hydra.yaml")
    # "hardware" frees a switch of the group on the command line, where hardware.seed and .precision name the
    # run's folder; a Python run's folder holds no overrides, so they are compared (device, strategy, ... stay free)
    check_rerun(cfg, out, ".hydra", [key for key in name_free_keys() if key != "hardware"])
