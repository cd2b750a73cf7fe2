"""Structured-config schemas: Hydra checks types and rejects unknown keys when it composes the config.

Each YAML option starts from its schema (``defaults: [/schema/<group>/<name>@_here_, _self_]``), so a typo
(``algorithm.num_generation=4``) or a wrong type (``train.iterations=ten``) fails before any work.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from hydra import compose, initialize_config_dir
from hydra.core.config_store import ConfigStore
from omegaconf import MISSING, DictConfig

from rlar.eval.model.schema import EvalClassifierSchema


@dataclass
class DigitsDataSchema:
    _target_: str = "rlar.data.digits.DigitsData"
    image_size: int = 32
    eval_fraction: float = 0.2
    split_seed: int = 0


@dataclass
class VQTrainSchema:
    steps: int = 600
    lr: float = 2e-3
    batch_size: int = 64
    seed: int = 0


@dataclass
class DigitsVQSchema:
    _target_: str = "rlar.tokenizer.build.build_digits_vq"
    codebook_size: int = 64
    embed_dim: int = 16
    hidden: int = 64
    checkpoint: str | None = None
    train: VQTrainSchema = field(default_factory=VQTrainSchema)
    cache_dir: str | None = None
    chunk_size: int = 256


@dataclass
class PretrainSchema:
    steps: int = 1200
    lr: float = 1e-3
    batch_size: int = 64
    label_dropout: float = 0.1
    seed: int = 0


@dataclass
class GPTSchema:
    _target_: str = "rlar.policy.prior.build_gpt_prior"
    vocab_size: int = MISSING
    block_size: int | None = None
    n_layer: int = 3
    n_head: int = 4
    n_embd: int = 96
    dropout: float = 0.0
    checkpoint: str | None = None
    pretrain: PretrainSchema = field(default_factory=PretrainSchema)
    cache_dir: str | None = None


@dataclass
class CommonAlgorithmSchema:
    beta: float = 0.0
    kl_estimator: str = "k3"
    entropy_coef: float = 0.0
    grad_accum: int = 1
    stats_key: str = "class"
    ntp_weight: float = 0.0


@dataclass
class GRPOSchema(CommonAlgorithmSchema):
    _target_: str = "rlar.algorithm.algorithms.GRPO"
    num_generations: int = 8
    clip_eps: float = 0.2
    clip_eps_high: float | None = None
    scale: str = "group"
    adv_clip: float | None = 5.0
    aggregation: str = "token"
    loss_constant: float | None = None
    drop_zero_std_groups: bool = False
    epochs: int = 1
    minibatch_size: int = 64


@dataclass
class ReinforceSchema(CommonAlgorithmSchema):
    _target_: str = "rlar.algorithm.algorithms.Reinforce"
    num_generations: int = 8
    baseline: str = "batch"
    standardize: bool = True
    min_count: int = 16
    minibatch_size: int = 64
    epochs: int = 1


@dataclass
class PPOSchema(CommonAlgorithmSchema):
    _target_: str = "rlar.algorithm.algorithms.PPO"
    num_generations: int = 4
    baseline: str = "group"
    clip_eps: float = 0.2
    epochs: int = 4
    minibatch_size: int = 32
    aggregation: str = "token"
    value_head: bool = False
    vf_coef: float = 0.5
    gamma: float = 1.0
    gae_lambda: float = 0.95


@dataclass
class ReconstructionRewardSchema:
    _target_: str = "rlar.reward.reconstruction.ReconstructionReward"
    kind: str = "l2"


@dataclass
class HardwareSchema:
    _target_: str = "rlar.runtime.hardware.Hardware"
    device: str = "cpu"
    precision: str = "fp32"
    strategy: str = "none"
    tf32: bool = False
    compile: bool = False
    seed: int = 0
    num_threads: int | None = None
    timeout_min: int = 30


@dataclass
class TensorBoardSchema:
    _target_: str = "rlar.runtime.logger.TensorBoardLogger"
    log_dir: str = "tensorboard"
    log_every: int = 1
    image_every: int = 25


@dataclass
class RolloutSchema:
    mode: str = "autoregressive"
    temperature: float = 1.0
    top_k: int | None = None
    top_p: float | None = None
    cfg_scale: float = 1.0
    cfg_interval: list[float] | None = None
    prefix_len: int = 0
    token_noise_prob: float = 0.0
    label_dropout: float = 0.0
    num_iter: int = 16
    schedule: str = "arccos"
    cfg_schedule: str = "constant"


@dataclass
class ScheduleSchema:
    max_steps: int = 16
    max_degree: int = 16
    hidden: int = 64
    common_noise: bool = True


@dataclass
class TrainSchema:
    iterations: int = 300
    batch_size: int = 8
    max_grad_norm: float | None = 1.0
    checkpoint_every: int = 50
    warmup_steps: int = 0
    score_chunk_size: int | None = None
    checkpoint_format: str = "consolidated"


@dataclass
class EvalSchema:
    every: int = 100
    samples_per_item: int = 1
    max_items: int | None = None
    batch_size: int = 128
    seed: int = 1234
    classifier: bool = True
    guided_cfg_scale: float | None = None
    classifier_model: EvalClassifierSchema = field(default_factory=EvalClassifierSchema)


@dataclass
class OptimizerSchema:
    _target_: str = "torch.optim.AdamW"
    lr: float = 1e-4
    betas: list[float] = field(default_factory=lambda: [0.9, 0.95])
    weight_decay: float = 0.0


@dataclass
class RlarConfig:
    data: Any = MISSING
    tokenizer: Any = MISSING
    policy: Any = MISSING
    algorithm: Any = MISSING
    reward: Any = MISSING
    hardware: Any = MISSING
    logger: Any = MISSING
    rollout: RolloutSchema = field(default_factory=RolloutSchema)
    schedule: ScheduleSchema = field(default_factory=ScheduleSchema)
    train: TrainSchema = field(default_factory=TrainSchema)
    eval: EvalSchema = field(default_factory=EvalSchema)
    optimizer: OptimizerSchema = field(default_factory=OptimizerSchema)
    name: str = "default"
    resume: bool = True
    cache_dir: str | None = None


SCHEMAS = {
    "data": {"digits": DigitsDataSchema},
    "tokenizer": {"digits_vq": DigitsVQSchema},
    "policy": {"gpt": GPTSchema},
    "algorithm": {"grpo": GRPOSchema, "reinforce": ReinforceSchema, "ppo": PPOSchema},
    "reward": {"reconstruction": ReconstructionRewardSchema},
    "hardware": {"hardware": HardwareSchema},
    "logger": {"tensorboard": TensorBoardSchema},
}


def register_schemas() -> None:
    """Store every option's schema under ``schema/<group>/<name>`` (the core ones above, and each sub-package's)."""
    from rlar.data.schemas import DATA_SCHEMAS
    from rlar.policy.schemas import POLICY_SCHEMAS
    from rlar.reward.remote.schema import REMOTE_SCHEMAS
    from rlar.reward.schemas import REWARD_SCHEMAS
    from rlar.tokenizer.schemas import TOKENIZER_SCHEMAS

    extra = {"data": DATA_SCHEMAS, "policy": POLICY_SCHEMAS, "reward": {**REWARD_SCHEMAS, **REMOTE_SCHEMAS},
             "tokenizer": TOKENIZER_SCHEMAS}
    cs = ConfigStore.instance()
    cs.store(name="rlar_schema", node=RlarConfig)
    for group, options in {**SCHEMAS, **{g: {**SCHEMAS[g], **more} for g, more in extra.items()}}.items():
        for name, node in options.items():
            cs.store(group=f"schema/{group}", name=name, node=node)


CONF_DIR = Path(__file__).resolve().parents[2] / "conf"


def compose_config(overrides: list[str] = ()) -> DictConfig:
    """The config ``python -m rlar.run`` would see, composed without running (for tests, benchmarks, notebooks)."""
    register_schemas()
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        return compose("config", overrides=list(overrides))
