"""A study: one YAML in ``experiments/`` (fixed ``overrides``, the ``seeds``, named ``settings``), and where the runs
of every study land. Read by the sweeps (``rlar.studies.ablation``) and the report (``rlar.studies.report``)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from omegaconf import OmegaConf

EXPERIMENTS_DIR = Path(__file__).resolve().parents[2] / "experiments"


@dataclass
class Study:
    name: str                          # the YAML's stem
    path: Path                         # the YAML
    title: str
    overrides: list[str]               # given to every run
    seeds: list[int]                   # hardware.seed values, one run each per setting
    settings: dict[str, list[str]]     # label -> overrides that define the setting
    notes: str = ""
    judge: int | None = None           # also judge each run and the prior over this many eval seeds (studies/judged.py)
    soup: bool = False                 # with judge: also judge each trained setting's weight soup of its runs

    def run_overrides(self, label: str) -> list[str]:
        """The overrides of setting ``label``'s runs: the study's, less those whose key the setting sets itself (the
        setting's value wins), then the setting's."""
        setting = self.settings[label]
        own = {override_key(o) for o in setting}
        return [o for o in self.overrides if override_key(o) not in own] + setting

    @property
    def report_dir(self) -> Path:
        """Beside its YAML: ``experiments/<study>/``."""
        return self.path.with_suffix("")


def override_key(override: str) -> str:
    """What an override sets, as written: ``optimizer.lr`` of ``optimizer.lr=3e-5``, ``+reward@reward.components.cov``
    of ``+reward@reward.components.cov=coverage``."""
    return override.split("=", 1)[0]


def load_study(study: str | Path) -> Study:
    """A study by name (``experiments/<name>.yaml``) or by the path of its YAML."""
    path = Path(study)
    if path.suffix not in (".yaml", ".yml"):
        path = EXPERIMENTS_DIR / f"{study}.yaml"
    if not path.is_file():
        known = sorted(p.stem for p in EXPERIMENTS_DIR.glob("*.yaml"))
        raise FileNotFoundError(f"no study {str(study)!r}: {path} does not exist; studies: {', '.join(known)}")
    raw = OmegaConf.to_container(OmegaConf.load(path), resolve=True)
    unknown = raw.keys() - {"title", "overrides", "seeds", "settings", "notes", "judge", "soup"}
    if unknown or not raw.get("settings"):
        raise ValueError(f"{path}: expected keys title, overrides, seeds, settings, notes, judge, soup; "
                         f"got unknown {sorted(unknown)} or no settings")
    judge, soup = raw.get("judge"), raw.get("soup", False)
    if judge is not None and (not isinstance(judge, int) or judge < 1):
        raise ValueError(f"{path}: judge is the number of eval seeds to judge every run over, at least 1, "
                         f"got {judge!r}; leave it out to report each run's own final evaluation only")
    if not isinstance(soup, bool) or (soup and judge is None):
        raise ValueError(f"{path}: soup={soup!r}: soup: true judges each setting's weight soup of its runs, and needs "
                         "judge: N (the eval seeds to judge it over); otherwise leave soup out")
    seeds = raw.get("seeds", [0])
    if not isinstance(seeds, list) or not seeds or not all(type(s) is int for s in seeds):
        raise ValueError(f"{path}: seeds must be a list of integers (hardware.seed of each run), e.g. [0, 1, 2]; "
                         f"got {seeds!r}")
    settings = {str(k): override_list(v, f"{path}: setting {k!r}") for k, v in raw["settings"].items()}
    return Study(name=path.stem, path=path, title=raw.get("title", path.stem),
                 overrides=override_list(raw.get("overrides", []), f"{path}: overrides"), seeds=seeds,
                 settings=settings, notes=raw.get("notes", ""), judge=judge, soup=soup)


def override_list(value, where: str) -> list[str]:
    """``value``, a study file's list of ``key=value`` overrides; else an error naming ``where``. (YAML reads a bare
    string, an empty entry or ``[optimizer.lr=1e-4]`` as something else; an override with a value holding ``,`` or
    ``[`` is quoted.)"""
    if not isinstance(value, list) or not all(isinstance(o, str) and "=" in o for o in value):
        raise ValueError(f"{where} must be a list of key=value overrides, e.g. [algorithm=reinforce, "
                         f"'optimizer.lr=1e-4']; got {value!r}")
    return value


RUN_NAME = "ablations"  # the runs' ``name``: they land in ``outputs/ablations/multirun/``


def sweep_dir(outputs: str | Path) -> Path:
    """Where the runs of every study are: one subfolder per run, named by its overrides."""
    return Path(outputs) / RUN_NAME / "multirun"
