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
class EfficiencyRewardSchema:
    _target_: str = "rlar.reward.efficiency.EfficiencyReward"
    target: int = 8
    max_steps: int = 64


@dataclass
class CLIPRewardSchema:
    _target_: str = "rlar.reward.clip.CLIPReward"
    model_path: str = MISSING
    class_names: list[str] | None = None
    class_names_file: str | None = None
    template: str = "a photo of a {}"
    scale: float = 1.0
    batch_size: int = 64


@dataclass
class WeightedRewardSchema:
    _target_: str = "rlar.reward.mixture.WeightedReward"
    components: Any = MISSING
    weights: dict[str, float] = MISSING
    normalize: bool = False


@dataclass
class ClassConsistencyRewardSchema:
    _target_: str = "rlar.reward.classifier.ClassConsistencyReward"
    data: Any = MISSING
    classifier: Any = None  # ${eval.classifier_model} (typed there); null = the defaults
    cache_dir: str | None = None


@dataclass
class PerceptualDigitsRewardSchema:
    _target_: str = "rlar.reward.classifier.PerceptualDigitsReward"
    data: Any = MISSING
    classifier: Any = None  # ${eval.classifier_model} (typed there); null = the defaults
    cache_dir: str | None = None


REWARD_SCHEMAS = {
    "psnr": PSNRRewardSchema,
    "ssim": SSIMRewardSchema,
    "lpips": LPIPSRewardSchema,
    "sharpness": SharpnessRewardSchema,
    "contrast": ContrastRewardSchema,
    "saturation": SaturationRewardSchema,
    "efficiency": EfficiencyRewardSchema,
    "clip": CLIPRewardSchema,
    "weighted": WeightedRewardSchema,
    "class_consistency": ClassConsistencyRewardSchema,
    "perceptual_digits": PerceptualDigitsRewardSchema,
}

