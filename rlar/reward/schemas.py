"""Structured-config schemas of the reward options (registered as ``schema/reward/<name>``)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from omegaconf import MISSING


@dataclass
class PSNRRewardSchema:
    _target_: str = "rlar.reward.metrics.PSNRReward"


@dataclass
class SSIMRewardSchema:
    _target_: str = "rlar.reward.metrics.SSIMReward"
    kernel_size: int = 11
    sigma: float = 1.5


@dataclass
class LPIPSRewardSchema:
    _target_: str = "rlar.reward.perceptual.LPIPSReward"
    net: str = "alex"
    pretrained: bool = True
    pnet_rand: bool = False
    weights_path: str | None = None
    device: str = "cpu"


@dataclass
class SharpnessRewardSchema:
    _target_: str = "rlar.reward.quality.SharpnessReward"


@dataclass
class ContrastRewardSchema:
    _target_: str = "rlar.reward.quality.ContrastReward"


@dataclass
class SaturationRewardSchema:
    _target_: str = "rlar.reward.quality.SaturationReward"


@dataclass
class WeightedRewardSchema:
    _target_: str = "rlar.reward.mixture.WeightedReward"
    components: Any = MISSING
    weights: dict[str, float] = MISSING
    normalize: bool = False


REWARD_SCHEMAS = {
    "psnr": PSNRRewardSchema,
    "ssim": SSIMRewardSchema,
    "lpips": LPIPSRewardSchema,
    "sharpness": SharpnessRewardSchema,
    "contrast": ContrastRewardSchema,
    "saturation": SaturationRewardSchema,
    "weighted": WeightedRewardSchema,
}
