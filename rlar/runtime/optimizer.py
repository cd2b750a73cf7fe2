"""The ``optimizer`` config: any ``torch.optim`` class over the trainable parameters."""

from __future__ import annotations

from collections.abc import Iterable

import torch
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf


def build_optimizer(options: DictConfig, params: Iterable[torch.Tensor]) -> torch.optim.Optimizer:
    """``options._target_`` over ``params`` with ``options``; a null one is left to the class (``betas=null`` for
    an optimizer that takes none: SGD, RMSprop, Adagrad)."""
    given = {k: v for k, v in OmegaConf.to_container(options, resolve=True).items() if v is not None}
    return instantiate(given, params=list(params))
