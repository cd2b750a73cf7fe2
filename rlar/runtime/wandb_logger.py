"""Weights & Biases logging of scalars and image grids (``logger=wandb``); ``wandb`` is the optional ``wandb`` extra,
imported when the logger opens."""

from __future__ import annotations

from pathlib import Path

import torch
import yaml

from rlar.runtime.atomic_files import atomic_write_text
from rlar.runtime.logger import checked_image_every, checked_log_every, group_grid, scalars_due

RUN_ID = Path("wandb") / "run_id"  # in the output dir: the W&B run a resumed rlar run continues


def continued_id(out: Path, config: dict | None) -> str | None:
    """The recorded W&B run id where the rlar run in ``out`` resumes as the loop decides (its config's ``resume``,
    true when there is no config, and a checkpoint to resume from), else ``None``: a fresh W&B run."""
    resumes = (config or {}).get("resume", True) and (out / "checkpoints" / "last.pt").is_file()
    return (out / RUN_ID).read_text().strip() if resumes and (out / RUN_ID).is_file() else None


class WandbLogger:
    """One W&B run per rlar run, its files under ``<output dir>/wandb``: a resumed run continues the W&B run whose id
    is recorded in ``<output dir>/wandb/run_id``; a fresh one (or ``resume=false``) starts another. Metrics are
    plotted against ``iteration`` (the loop's step), which may repeat (the supervised warm-up counts from 0 again).
    ``mode``: ``offline`` (default: no network; ``wandb sync <output dir>/wandb/offline-run-*`` uploads it later),
    ``online`` or ``disabled``."""

    def __init__(self, project: str = "rlar", entity: str | None = None, name: str | None = None,
                 group: str | None = None, tags: list[str] = (), mode: str = "offline", log_every: int = 1,
                 image_every: int = 25):
        self.project, self.entity, self.name, self.group = project, entity, name, group
        self.tags, self.mode = list(tags), mode
        self.log_every, self.image_every = checked_log_every(log_every), checked_image_every(image_every)
        self._run = None

    def open(self, output_dir: str | Path) -> None:
        """Start the W&B run, or continue the recorded one (:func:`continued_id`), and record its id; the run's
        composed config (Hydra's ``.hydra/config.yaml``, when written) is its config."""
        import wandb

        out = Path(output_dir)
        hydra_config = out / ".hydra" / "config.yaml"
        config = yaml.safe_load(hydra_config.read_text()) if hydra_config.is_file() else None
        run_id = continued_id(out, config)
        self._run = wandb.init(project=self.project, entity=self.entity, name=self.name or out.name, group=self.group,
                               tags=self.tags, mode=self.mode, dir=str(out), config=config, id=run_id,
                               resume="allow" if run_id else None)
        (out / RUN_ID).parent.mkdir(exist_ok=True)
        atomic_write_text(out / RUN_ID, self._run.id)
        self._run.define_metric("iteration")
        self._run.define_metric("*", step_metric="iteration")

    def scalars(self, metrics: dict[str, float], step: int) -> None:
        """Those of ``metrics`` due at ``step`` (:func:`rlar.runtime.logger.scalars_due`)."""
        due = scalars_due(metrics, step, self.log_every) if self._run is not None else {}  # never opened: rank > 0
        if due:
            self._run.log({**due, "iteration": step})

    def groups(self, tag: str, targets: torch.Tensor, samples: torch.Tensor, step: int, max_rows: int = 4) -> None:
        """The grid of :func:`rlar.runtime.logger.group_grid` under ``tag``, as an 8-bit RGB image."""
        if self._run is None:
            return
        import wandb

        grid = group_grid(targets, samples, max_rows).mul(255).round().to(torch.uint8)  # [C, H, W]
        self._run.log({tag: wandb.Image(grid.permute(1, 2, 0).cpu().numpy()), "iteration": step})

    def close(self) -> None:
        if self._run is not None:
            self._run.finish()
            self._run = None
