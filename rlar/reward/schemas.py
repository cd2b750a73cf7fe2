"""Structured-config schemas of the reward options (registered as ``schema/reward/<name>``)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from omegaconf import MISSING

from rlar.config.schemas import RewardClassifierSchema


@dataclass
class ReconstructionRewardSchema:
    _target_: str = "rlar.reward.reconstruction.ReconstructionReward"
    kind: str = "l2"  # l2 (mean squared error per pixel) | l1


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
    net: str = "alex"  # alex | vgg | squeeze
    pretrained: bool = True  # lpips' calibrated linear layers (shipped inside the lpips package)
    pnet_rand: bool = False  # true = random backbone, no weights file needed
    weights_path: str | None = None  # the torchvision backbone weights file; null = the torch hub cache
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
    target: int = 8  # steps at or below this score 1
    max_steps: int = 64  # steps at or above this score 0; reward=efficiency sets it to schedule.max_steps


@dataclass
class CLIPRewardSchema:
    _target_: str = "rlar.reward.clip.CLIPReward"
    model_path: str = MISSING  # required: the directory with config.json, the weights and the processor files
    class_names: list[str] | None = None  # class names in class-id order, or
    class_names_file: str | None = None  # a text file with one name per line
    template: str = "a photo of a {}"  # '{}' is replaced by the class name
    scale: float = 1.0  # 100 = torchmetrics' CLIPScore units (without its clamp at 0)
    batch_size: int = 64  # images per CLIP forward pass


@dataclass
class WeightedRewardSchema:
    _target_: str = "rlar.reward.mixture.WeightedReward"
    components: Any = MISSING
    weights: dict[str, float] = MISSING
    normalize: bool = False  # z-score each component over the batch before weighting


@dataclass
class ClassifierRewardSchema:
    """What every reward that reads a digits classifier takes: the data it trains on and its own classifier."""

    data: Any = MISSING
    # its own classifier: the judge's architecture, another seed (never eval.classifier_model: refused)
    classifier: RewardClassifierSchema = field(default_factory=RewardClassifierSchema)
    cache_dir: str | None = None


@dataclass
class ClassConsistencyRewardSchema(ClassifierRewardSchema):
    _target_: str = "rlar.reward.classifier.ClassConsistencyReward"
    threshold: float | None = None  # 1 where the class probability is >= threshold, else 0; null: the probability


@dataclass
class PerceptualDigitsRewardSchema(ClassifierRewardSchema):
    _target_: str = "rlar.reward.classifier.PerceptualDigitsReward"


@dataclass
class LeaveOneOutFDRewardSchema(ClassifierRewardSchema):
    """The reward classifier's features are the feature space."""

    _target_: str = "rlar.reward.loo_fd.LeaveOneOutFDReward"
    # decay of the moving averages of the rollouts' moments across calls, mixed in with weight ema; 0 = the batch alone
    ema: float = 0.9
    class_conditional: bool = False  # per requested class (meta['labels']) against that class's data
    chunk_size: int = 256  # images per classifier forward pass


@dataclass
class CoverageRewardSchema(ClassifierRewardSchema):
    """The reward classifier's features are the feature space."""

    _target_: str = "rlar.reward.coverage.CoverageReward"
    k: int = 3  # each train digit's ball reaches its k-th nearest train digit (the real manifold of eval/precision)
    bank_size: int = 128  # recent samples' features kept per class next to the batch; 0 = the batch alone
    class_conditional: bool = True  # per requested class (meta['labels']) against that class's data
    chunk_size: int = 256  # images per classifier forward pass


@dataclass
class RecallRewardSchema(CoverageRewardSchema):
    """As coverage, with the generated points' balls: each reaches its k-th nearest sample of the batch and bank."""

    _target_: str = "rlar.reward.coverage.RecallReward"


@dataclass
class DiscriminatorRewardSchema(ClassifierRewardSchema):
    """An online discriminator of the data against the policy's samples, in the reward classifier's features."""

    _target_: str = "rlar.reward.discriminator.DiscriminatorReward"
    class_conditional: bool = True  # the discriminator reads the requested class (a projection term)
    hidden: int = 128  # width of its two hidden layers
    lr: float = 1e-3  # its Adam learning rate
    steps: int = 4  # its Adam steps per call
    warmup_steps: int = 200  # extra steps on the first call, before it scores anything
    batch_size: int = 256  # samples (and as many data images) per step
    buffer_size: int = 1024  # the last this many samples' features are its negatives
    seed: int = 0  # its initialization and its draws of data images
    chunk_size: int = 256  # images per classifier forward pass
    # the reward is the logit clamped to [-bound, bound] (null: no bound, the default; a bound of 10 made the
    # default recipe worse on every seed, docs/rewards.md)
    logit_bound: float | None = None


@dataclass
class CompositionalRewardSchema(ClassifierRewardSchema):
    """The digits text task's reward: the class check reads its own classifier."""

    _target_: str = "rlar.reward.compositional.CompositionalReward"


REWARD_SCHEMAS = {
    "reconstruction": ReconstructionRewardSchema,
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
    "loo_fd": LeaveOneOutFDRewardSchema,
    "coverage": CoverageRewardSchema,
    "recall": RecallRewardSchema,
    "discriminator": DiscriminatorRewardSchema,
    "compositional": CompositionalRewardSchema,
}

