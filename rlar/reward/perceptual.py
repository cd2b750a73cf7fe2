"""LPIPS perceptual reward: minus the learned perceptual distance between a decoded sample and its target.

The lpips package ships its calibrated linear layers, but its backbone (torchvision AlexNet / VGG16 /
SqueezeNet-1.1) would download ImageNet weights. Here the backbone is always built empty and filled from a
local file, the torch hub cache or ``weights_path``, so building never touches the network.
"""

from __future__ import annotations

import os
import warnings
from pathlib import Path
from urllib.parse import urlparse

import lpips
import torch
from torchvision import models

from rlar.contracts import Reward
from rlar.reward.quality import as_rgb

BACKBONES = {
    "alex": models.AlexNet_Weights.IMAGENET1K_V1,
    "vgg": models.VGG16_Weights.IMAGENET1K_V1,
    "squeeze": models.SqueezeNet1_1_Weights.IMAGENET1K_V1,
}


def backbone_file(net: str) -> Path:
    """Where torch hub caches the ImageNet backbone weights of LPIPS ``net``."""
    name = os.path.basename(urlparse(BACKBONES[net].url).path)
    return Path(torch.hub.get_dir()) / "checkpoints" / name


def load_backbone(backbone: torch.nn.Module, state: dict[str, torch.Tensor]) -> None:
    """Load a torchvision ``features.<i>.*`` state dict into lpips' ``slice<k>.<i>.*`` backbone (strict)."""
    backbone.load_state_dict({key: state[f"features.{key.split('.', 1)[1]}"] for key in backbone.state_dict()})


def build_lpips(net: str = "alex", pretrained: bool = True, pnet_rand: bool = False,
                weights_path: str | None = None) -> lpips.LPIPS:
    """A frozen ``lpips.LPIPS`` in eval mode; ``pnet_rand`` keeps a random backbone (plumbing tests only)."""
    if net not in BACKBONES:
        raise ValueError(f"reward.net must be one of {tuple(BACKBONES)}, got {net!r}")
    path = None
    if not pnet_rand:
        path = Path(weights_path).expanduser() if weights_path else backbone_file(net)
        if not path.is_file():
            raise FileNotFoundError(
                f"LPIPS net={net!r} needs the torchvision ImageNet backbone weights "
                f"'{backbone_file(net).name}' ({BACKBONES[net].url}), not found at {path}; it is never downloaded. "
                f"Put the file in the torch hub checkpoints directory ({backbone_file(net).parent}, under "
                "$TORCH_HOME) or give its path as reward.weights_path=..., or set reward.pnet_rand=true for a "
                "random backbone (plumbing tests only: the distance is then not perceptual).")
    with warnings.catch_warnings():  # lpips passes torchvision's deprecated `pretrained=False`
        warnings.filterwarnings("ignore", category=UserWarning, module="torchvision")
        model = lpips.LPIPS(net=net, pretrained=pretrained, pnet_rand=True, verbose=False)
    if path is not None:
        load_backbone(model.net, torch.load(path, map_location="cpu", weights_only=True))
    return model.eval().requires_grad_(False)


def lpips_distance(model: lpips.LPIPS, images: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """LPIPS distance per item of ``[N, 1 or 3, H, W]`` images in [-1, 1] (differentiable w.r.t. both): ``[N]``."""
    return model(as_rgb(images.float()), as_rgb(targets.float())).flatten()


class LPIPSReward(Reward):
    """``reward(images, targets, meta) -> (-lpips [N], {"neg_lpips": [N]})``; the network is built once."""

    reads_targets = True

    def __init__(self, net: str = "alex", pretrained: bool = True, pnet_rand: bool = False,
                 weights_path: str | None = None, device: str = "cpu"):
        self.device = torch.device(device)
        self.model = build_lpips(net, pretrained, pnet_rand, weights_path).to(self.device)

    def __call__(self, images: torch.Tensor, targets: torch.Tensor, meta: dict | None = None):
        distance = lpips_distance(self.model, images.to(self.device), targets.to(self.device))  # [N]
        reward = -distance.to(images.device)
        return reward, {"neg_lpips": reward}
