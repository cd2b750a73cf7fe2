"""Weights & Biases logging of scalars and image grids (``logger=wandb``); ``wandb`` is the optional ``wandb`` extra,
imported when the logger opens."""

from __future__ import annotations

from pathlib import Path

import torch
import yaml

from rlar.runtime.logger import group_grid


class WandbLogger:
    """One W&B run per rlar run, its files under ``<output dir>/wandb``. Metrics are plotted against ``iteration``
    (the loop's step), which may repeat (the supervised warm-up counts from 0 again). ``mode``: ``offline`` (default:
    no network; ``wandb sync <output dir>/wandb/offline-run-*`` uploads it later), ``online`` or ``disabled``."""

    def __init__(self, project: str = "rlar", entity: str | None = None, name: str | None = None,
                 group: str | None = None, tags: list[str] = (), mode: str = "offline", log_every: int = 1,
                 image_every: int = 25):
        self.project, self.entity, self.name, self.group = project, entity, name, group
        self.tags, self.mode = list(tags), mode
        self.log_every, self.image_every = log_every, image_every
        self._run = None

    def open(self, output_dir: str | Path) -> None:
        """Start the W&B run; the run's composed config (Hydra's ``.hydra/config.yaml``, when written) is its config."""
        import wandb

        out = Path(output_dir)
        hydra_config = out / ".hydra" / "config.yaml"
        config = yaml.safe_load(hydra_config.read_text()) if hydra_config.is_file() else None
        self._run = wandb.init(project=self.project, entity=self.entity, name=self.name or out.name, group=self.group,
                               tags=self.tags, mode=self.mode, dir=str(out), config=config)
        self._run.define_metric("iteration")
        self._run.define_metric("*", step_metric="iteration")

    def scalars(self, metrics: dict[str, float], step: int) -> None:
        if self._run is not None and step % self.log_every == 0:  # never opened: a rank other than 0
            self._run.log({**metrics, "iteration": step})

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
