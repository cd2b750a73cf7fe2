"""TensorBoard logging of scalars and image grids, and what every logger shares: which scalars and images are due,
the grid."""

from __future__ import annotations

import logging
from pathlib import Path

import torch
from torch.utils.tensorboard import SummaryWriter
from torchvision.utils import make_grid

log = logging.getLogger(__name__)
EVALUATION_PREFIXES = ("eval/", "eval_cfg/")  # the tags of an evaluation's results (``rlar.eval.evaluate``)


def checked_log_every(log_every: int) -> int:
    """``log_every``, refused (``ValueError``) unless it is a step count of 1 or more."""
    if log_every < 1:
        raise ValueError(f"log_every={log_every}: scalars are logged every log_every iterations; set logger.log_every "
                         "(logger.loggers.<name>.log_every under logger=multi) to 1 or more")
    return log_every


def checked_image_every(image_every: int) -> int:
    """``image_every``, refused (``ValueError``) unless it is a step count of 0 (never) or more."""
    if image_every < 0:
        raise ValueError(f"image_every={image_every}: image grids are logged every image_every iterations (0: never); "
                         "set logger.image_every (logger.loggers.<name>.image_every under logger=multi) to 0 or more")
    return image_every


def scalars_due(metrics: dict[str, float], step: int, log_every: int) -> dict[str, float]:
    """What a logger with ``log_every`` logs of ``metrics`` at ``step``: all of them every ``log_every`` steps (step 0
    included), an evaluation's results (``eval/*``, ``eval_cfg/*``) whenever they come."""
    if step % log_every == 0:
        return metrics
    return {key: value for key, value in metrics.items() if key.startswith(EVALUATION_PREFIXES)}


def images_due(image_every: int, step: int) -> bool:
    """Whether a logger with ``image_every`` logs image grids at ``step``: every ``image_every`` steps and the first
    (0: never)."""
    return bool(image_every) and (step % image_every == 0 or step == 1)


def group_grid(targets: torch.Tensor, samples: torch.Tensor, max_rows: int = 4) -> torch.Tensor:
    """One row per item: its input image, then the G samples of its group, as one image ``[C, H', W']`` in [0, 1].
    targets ``[B, C, H, W]``, samples ``[B*G, C, H, W]``, both in [-1, 1]."""
    rows = min(max_rows, len(targets))
    g = len(samples) // len(targets)
    grid = torch.cat([targets[:rows, None], samples[: rows * g].view(rows, g, *samples.shape[1:])], dim=1)
    return make_grid(grid.flatten(0, 1).float(), nrow=g + 1, normalize=True, value_range=(-1, 1), pad_value=1)


class TensorBoardLogger:
    def __init__(self, log_dir: str = "tensorboard", log_every: int = 1, image_every: int = 25):
        self.log_dir = log_dir
        self.log_every = checked_log_every(log_every)
        self.image_every = checked_image_every(image_every)
        self._writer: SummaryWriter | None = None

    def open(self, output_dir: str | Path) -> None:
        """Log under ``output_dir / log_dir`` (a relative ``log_dir`` lives in the run's output dir)."""
        self._writer = SummaryWriter(str(Path(output_dir) / self.log_dir))

    def scalars(self, metrics: dict[str, float], step: int) -> None:
        """Those of ``metrics`` due at ``step`` (:func:`scalars_due`)."""
        due = scalars_due(metrics, step, self.log_every)
        self.write(lambda writer: [writer.add_scalar(key, value, step) for key, value in due.items()])

    def groups(self, tag: str, targets: torch.Tensor, samples: torch.Tensor, step: int, max_rows: int = 4) -> None:
        """The grid of :func:`group_grid` under ``tag``."""
        self.write(lambda writer: writer.add_image(tag, group_grid(targets, samples, max_rows), step))

    def close(self) -> None:
        self.write(lambda writer: writer.close())
        self._writer = None

    def write(self, call) -> None:
        """``call(writer)``, unless the logger was never opened (a rank other than 0) or is off. A failed write (a full
        disk: TensorBoard's background writer raises it at the next call) turns the logger off with a warning: the run
        goes on, and its checkpoints and summary are kept."""
        if self._writer is None:
            return
        try:
            call(self._writer)
        except OSError as e:
            log.warning("TensorBoard logging under %s failed (%s): it is off for the rest of the run", self.log_dir, e)
            self._writer = None
