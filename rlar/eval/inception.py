"""The Inception-v3 of FID and IS (torch-fidelity's ``FeatureExtractorInceptionV3``), from a local weights file."""

from __future__ import annotations

import contextlib
import os
from pathlib import Path

import numpy as np
import torch
from torch_fidelity.feature_extractor_inceptionv3 import FeatureExtractorInceptionV3

from rlar.runtime.cache import cache_root
from rlar.tokenizer.frozen import without_tf32

WEIGHTS_NAME = "pt_inception-2015-12-05-6726825d.pth"
POOL_WIDTH = 2048  # pool features (FID, precision/recall) [N, 2048]: what a reference batch's mu and sigma fit
FEATURES = (str(POOL_WIDTH), "logits_unbiased")  # the pool features; the logits (IS) [N, 1008]


def default_weights_path(cache_dir: str | os.PathLike | None = None) -> Path:
    """Where the weights are looked for when no path is given: ``<cache_dir>/inception/`` + ``WEIGHTS_NAME``."""
    return cache_root(cache_dir) / "inception" / WEIGHTS_NAME


def missing_weights_message(path: Path) -> str:
    return (f"Inception weights not found at '{path}'. Put the FID Inception-v3 weights there: the file "
            f"{WEIGHTS_NAME} (91 MiB) that torch-fidelity and pytorch-fid use, from pytorch-fid's GitHub release "
            f"'fid_weights' (named {WEIGHTS_NAME}) or torch-fidelity's release 'v0.2.0' (the same file, named "
            "weights-inception-2015-12-05-6726825d.pth); or pass its path with --inception-weights PATH (rlar-eval) "
            "or eval.inception.weights=PATH (training). rlar never downloads it; see docs/evaluation.md")


@contextlib.contextmanager
def weights_only_loads():
    """Every ``torch.load`` inside reads tensors only (torch's ``TORCH_FORCE_WEIGHTS_ONLY_LOAD``): the weights file
    is never unpickled, whatever the library asks for."""
    before = os.environ.get("TORCH_FORCE_WEIGHTS_ONLY_LOAD")
    os.environ["TORCH_FORCE_WEIGHTS_ONLY_LOAD"] = "1"
    try:
        yield
    finally:
        if before is None:
            del os.environ["TORCH_FORCE_WEIGHTS_ONLY_LOAD"]
        else:
            os.environ["TORCH_FORCE_WEIGHTS_ONLY_LOAD"] = before


class InceptionFeatures:
    """torch-fidelity's Inception-v3 on ``device``, loaded from ``weights`` (a state dict in its layout); images
    are resized to 299 px inside, as TensorFlow's FID code did."""

    def __init__(self, weights: str | os.PathLike, device="cpu", batch_size: int = 64):
        path = Path(weights).expanduser()
        if not path.is_file():
            raise FileNotFoundError(missing_weights_message(path))
        with weights_only_loads():
            net = FeatureExtractorInceptionV3("inception-v3-compat", list(FEATURES),
                                              feature_extractor_weights_path=str(path))
        self.net, self.device, self.batch_size = net.to(device), device, batch_size

    @torch.no_grad()
    def __call__(self, images: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
        """``(pool [N, 2048], logits [N, 1008])`` fp32 on the CPU of ``images`` uint8 ``[N, H, W, 3]``; on CUDA without
        TF32 (full fp32 matmuls and convolutions, as TensorFlow's and ADM's evaluators compute)."""
        pools, logits = [], []
        with without_tf32(torch.device(self.device)):
            for chunk in np.array_split(images, max(1, -(-len(images) // self.batch_size))):
                x = torch.from_numpy(chunk).permute(0, 3, 1, 2).to(self.device)  # [b, 3, H, W] uint8
                pool, logit = self.net(x)
                pools.append(pool.float().cpu())
                logits.append(logit.float().cpu())
        return torch.cat(pools), torch.cat(logits)
