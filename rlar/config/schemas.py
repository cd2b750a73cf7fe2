"""The schemas of the config's own sections (rollout, schedule, train, eval, optimizer) and of the whole config.

Each group's options are typed by their sub-package's schemas (``rlar/<package>/schemas.py``, or the built class
itself); ``rlar.config.store`` registers them all. The defaults and the comments here are the documentation of
every option: ``python -m rlar.run --help`` prints the composed values.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from omegaconf import MISSING, DictConfig, OmegaConf


@dataclass
class RolloutSchema:
    # autoregressive | prefix (first prefix_len ground-truth tokens given) | teacher_forced |
    # parallel (policy=arpg: several positions per step, a random order per sample) |
    # schedule (policy=arpg frozen: a network learns how many positions per step, and which)
    mode: str = "autoregressive"
    temperature: float = 1.0
    top_k: int | None = None  # truncation changes only which token is drawn: off-policy (docs/design.md, log-prob rule)
    top_p: float | None = None
    cfg_scale: float = 1.0  # classifier-free guidance; log-probs are under the guided distribution
    cfg_interval: list[float] | None = None  # [lo, hi): guide only token positions t with lo <= t/T < hi; null = all
    prefix_len: int = 0  # ground-truth tokens given before sampling, for mode=prefix
    # each ground-truth context token replaced by a uniformly random code with this probability
    # (teacher_forced/prefix context and the NTP term's context; VA-pi's noisy context)
    token_noise_prob: float = 0.0
    # each item's class label replaced by the null class with this probability, in the rollout; the update reads
    # the rollout's labels, so its distribution is the rollout's
    label_dropout: float = 0.0
    num_iter: int = 16  # mode=parallel (policy=arpg): decoding steps (at most T; several tokens per step)
    schedule: str = "arccos"  # mode=parallel: tokens per step, arccos | cosine | linear (of the fraction still masked)
    # mode=parallel: guidance per step, constant | linear (1 + (cfg_scale-1) * decoded/T)
    cfg_schedule: str = "constant"
    # autoregressive/prefix/parallel: decode this many of the B*G rows at a time (bounds the KV cache and
    # activations; the same samples for the same seed); null = all rows at once
    micro_batch_size: int | None = None


@dataclass
class ScheduleSchema:
    """rollout.mode=schedule: the learned decoding schedule of the frozen ARPG (rlar/schedule)."""

    max_steps: int = 16  # cap on decoding steps: step max_steps fills every position left (forced, log-prob 0)
    max_degree: int = 16  # the degree head's choices: k = 1..max_degree positions per step (at most what is left)
    hidden: int = 64  # width of the schedule network
    # the G samples of an item share their token uniforms (one per position, inverted through that position's CDF):
    # each token is still an exact draw, and rewards in a group differ by schedule
    common_noise: bool = True


@dataclass
class TrainSchema:
    iterations: int = 300  # 0 = evaluate the prior only (a baseline: the prior under other sampling settings)
    batch_size: int = 8  # images per iteration (over all processes); each gets algorithm.num_generations samples
    max_grad_norm: float | None = 1.0
    checkpoint_every: int = 50
    warmup_steps: int = 0  # teacher-forced cross-entropy steps on the train split before RL (KL reference: the prior)
    # decode and score in chunks of this many images, the next chunk decoding while the last is scored (for slow
    # or remote rewards); refused with a reward z-scored over each call (reward.normalize). null = decode
    # everything, then score once
    score_chunk_size: int | None = None
    # consolidated: one file (rank 0 gathers) | sharded: torch.distributed.checkpoint shards written by every rank
    # (+ checkpoints/policy.pt at the end); both resume on any number of processes
    checkpoint_format: str = "consolidated"
    # an exponential moving average of the policy's weights, ema = decay * ema + (1 - decay) * policy after each
    # optimizer step, starting at the prior; evaluation (eval/*) samples from it. null = no average
    ema_decay: float | None = 0.95
    # keep the frozen KL reference (algorithm.beta > 0) on the CPU, moved to the device for each update minibatch
    # (FSDP2: its shards offloaded, gathered per forward pass); the same loss, less device memory, more transfers
    ref_on_cpu: bool = False
    # stop with an error after this many iterations in a row in which no reward was finite (a broken reward model)
    max_nonfinite_iterations: int = 10


@dataclass
class ClassifierTrainSchema:
    steps: int = 300
    lr: float = 2e-3
    batch_size: int = 64
    max_shift: int = 2  # random shifts of up to this many pixels along each axis
    seed: int = 0  # the judge's (eval.classifier_model); the rewards' classifiers default to another


@dataclass
class EvalClassifierSchema:
    """A small CNN of the data's classes, trained on the train split on first use, then cached. As
    ``eval.classifier_model`` it is the judge of eval/fd, eval/class_acc, eval/precision, eval/recall,
    eval/diversity and eval/memorization, which no reward may read (``rlar.config.validate`` refuses a reward
    classifier of the same spec)."""

    input_size: int = 32  # images are resized to this (a multiple of 8)
    width: int = 16  # channels of the first of three conv blocks (then 2x, 4x)
    features: int = 128  # penultimate features: the space of eval/fd (and of the judge's other metrics)
    train: ClassifierTrainSchema = field(default_factory=ClassifierTrainSchema)


@dataclass
class RewardClassifierTrainSchema(ClassifierTrainSchema):
    seed: int = 1  # not the judge's (eval.classifier_model.train.seed): another model, another cache entry


@dataclass
class RewardClassifierSchema(EvalClassifierSchema):
    """The classifier a reward reads (class_consistency, perceptual_digits, loo_fd, coverage, compositional): the
    judge's architecture, trained from another seed, so that the reward never reads the judge."""

    train: ClassifierTrainSchema = field(default_factory=RewardClassifierTrainSchema)


@dataclass
class InceptionEvalSchema:
    """eval/inception_fid, _is, _precision, _recall, _density and _coverage (docs/evaluation.md)."""

    enabled: bool = False
    # the FID Inception-v3 weights (a local file, never downloaded);
    # null = <cache_dir>/inception/pt_inception-2015-12-05-6726825d.pth
    weights: str | None = None
    reference: str | None = None  # an .npz (arr_0: uint8 [N, H, W, 3]) or a folder of images; null = the held-out split
    num_samples: int = 1000  # class-balanced samples per evaluation (FID depends on it: compare at the same number)


@dataclass
class EvalSchema:
    every: int = 100
    # free-running samples per held-out item: 4 makes eval/fd steady enough to tell seeds apart (docs/evaluation.md)
    samples_per_item: int = 4
    max_items: int | None = None  # null = the whole held-out split
    batch_size: int = 128
    seed: int = 1234
    classifier: bool = True  # eval/class_acc and eval/fd from the embedded evaluation classifier (rlar/eval/model)
    # a number: evaluate again under this classifier-free guidance (eval_cfg/*), at every token position (not only
    # rollout.cfg_interval's: a reference the rollout's guidance does not move; ARPG's cfg_schedule still applies)
    guided_cfg_scale: float | None = None
    classifier_model: EvalClassifierSchema = field(default_factory=EvalClassifierSchema)
    inception: InceptionEvalSchema = field(default_factory=InceptionEvalSchema)


@dataclass
class OptimizerSchema:
    _target_: str = "torch.optim.AdamW"
    lr: float = 3e-5  # the default recipe's (with GRPO's next-token term; experiments/distribution)
    betas: list[float] | None = field(default_factory=lambda: [0.9, 0.95])  # null: an optimizer without (SGD)
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
    scheduler: Any = MISSING  # the learning-rate schedule: rlar/conf/scheduler/ (any torch.optim.lr_scheduler)
    # captions as conditions: rlar/conf/text_encoder/ (t5, clip, embedded); null = class labels
    # (docs/text_conditioning.md)
    text_encoder: Any = None
    rollout: RolloutSchema = field(default_factory=RolloutSchema)
    schedule: ScheduleSchema = field(default_factory=ScheduleSchema)
    train: TrainSchema = field(default_factory=TrainSchema)
    eval: EvalSchema = field(default_factory=EvalSchema)
    optimizer: OptimizerSchema = field(default_factory=OptimizerSchema)
    name: str = "default"  # groups runs under outputs/<name>/
    resume: bool = True  # re-running the same command continues from its last checkpoint
    cache_dir: str | None = None  # trained tokenizer and prior; null = $RLAR_CACHE_DIR or ~/.cache/rlar
    # what `rlar.run` returns, a sweeper's objective: a metric of the last evaluation (eval/fd: minimise it)
    optimized_metric: str = "eval/reward"


def from_options(schema: type, options: dict):
    """A builder's keyword arguments (as Hydra passes them, nested sections as configs) as an instance of its
    ``schema``: the schema's defaults for what is not given, types checked, unknown keys rejected."""
    plain = {k: OmegaConf.to_container(v, resolve=True) if isinstance(v, DictConfig) else v
             for k, v in options.items()}
    return OmegaConf.to_object(OmegaConf.merge(OmegaConf.structured(schema), plain))
