"""Building a run: every part of the RL loop, made from the config, on this process's device."""

from __future__ import annotations

import copy
from dataclasses import dataclass
from pathlib import Path

import torch
from hydra.utils import instantiate
from omegaconf import DictConfig
from torch import nn
from torch.optim.lr_scheduler import LRScheduler
from torch.optim.swa_utils import AveragedModel

from rlar.algorithm.cca import check_num_classes
from rlar.contracts import Algorithm, DataPairAlgorithm, Logger, Policy, Reward, Tokenizer
from rlar.data.batches import ImageData
from rlar.eval.inception_eval import InceptionEval, build_inception_eval
from rlar.eval.model import EvalModel, build_eval_model
from rlar.reward.build import build_reward, reads_run_data
from rlar.reward.classifier import asked_classifiers, build_classifiers
from rlar.rollout.sampling import scored_sampling
from rlar.runtime import distributed
from rlar.runtime.checkpoint import Checkpointer
from rlar.runtime.ema import policy_ema, update_after_every_step
from rlar.runtime.hardware import Hardware
from rlar.runtime.optimizer import build_optimizer
from rlar.runtime.random_streams import rank_generators
from rlar.schedule.decoder import ScheduleDecoder
from rlar.text.build import build_text_encoder
from rlar.text.encoder import TextEncoder


@dataclass
class Run:
    """The parts of one training run. ``policy`` is the module itself; ``train_policy`` and ``train_critic`` are
    what the update calls (DDP wrappers, or the modules themselves, sharded in place by FSDP2)."""

    cfg: DictConfig
    hw: Hardware
    out: Path  # the output directory (only rank 0 writes to it)
    data: ImageData
    tokenizer: Tokenizer
    policy: Policy
    ref_policy: Policy | None  # the frozen prior, for the KL term or CCA's log-ratio (None when algorithm.beta is 0)
    critic: nn.Linear | None  # the value head (PPO with algorithm.value_head)
    trainable: nn.ModuleDict  # {"policy", "critic"?}: what the optimizer steps and the checkpoint saves (with "ema")
    train_policy: nn.Module
    train_critic: nn.Module | None
    reward: Reward
    eval_model: EvalModel | None
    algorithm: Algorithm | DataPairAlgorithm
    optimizer: torch.optim.Optimizer
    checkpointer: Checkpointer
    logger: Logger
    generators: dict[str, torch.Generator]  # data, sample, update (rlar.runtime.random_streams)
    sampling: dict  # the distribution every log-prob is under, in rollout and update alike
    scheduler: LRScheduler  # the learning-rate schedule, stepped once per iteration
    ema: AveragedModel | None  # the policy's moving average (train.ema_decay), updated after each optimizer step
    inception: InceptionEval | None  # eval/inception_* (eval.inception.enabled)
    text_encoder: TextEncoder | None = None  # captions -> the policy's text conditions (frozen); None: class labels

    @property
    def device(self) -> torch.device:
        return self.hw.torch_device

    @property
    def evaluated_policy(self) -> nn.Module:
        """The weights evaluation samples and an export writes: the moving average when on, else the policy."""
        return self.policy if self.ema is None else self.ema.module

    @property
    def share(self) -> slice:
        """This rank's rows of a global batch of ``train.batch_size`` items: ``B / world`` of them."""
        local_batch = self.cfg.train.batch_size // distributed.world_size()
        return slice(distributed.rank() * local_batch, (distributed.rank() + 1) * local_batch)

    def this_rank(self, x: torch.Tensor) -> torch.Tensor:
        """This rank's items of a global batch, on its device: ``[B / world, ...]``, each with all its generations."""
        return x[self.share].to(self.device)


def build_generator(cfg: DictConfig, data: ImageData, device) -> tuple[Tokenizer, Policy, TextEncoder | None]:
    """The tokenizer, the policy and the text encoder (None: class labels) of ``cfg``, made on the CPU, then moved
    to ``device``: a cache miss (the tokenizer, the prior pretrained on its codes) trains where the data is, and the
    cache holds the same entry whatever device a run uses. With ``rollout.mode=schedule`` the policy is the
    decoding-schedule network around the frozen ARPG (rlar.schedule)."""
    tokenizer = instantiate(cfg.tokenizer, data=data)
    text_encoder = build_text_encoder(cfg)  # where the prior is built; the embedded one is trained with it
    policy = instantiate(cfg.policy, tokenizer=tokenizer, data=data, text_encoder=text_encoder)
    if cfg.rollout.mode == "schedule":
        policy = ScheduleDecoder(policy, **cfg.schedule)
    return tokenizer.to(device), policy.to(device), None if text_encoder is None else text_encoder.to(device)


def check_batch_fits(batch_size: int, train_items: int) -> None:
    """``train.batch_size`` is at most the train split's size: refused before the tokenizer and the evaluation."""
    if batch_size > train_items:
        raise ValueError(f"train.batch_size={batch_size} is larger than the train split ({train_items} images); set "
                         f"train.batch_size<={train_items} or give more data")


def build_run(cfg: DictConfig, hw: Hardware, output_dir: str | Path | None) -> Run:
    """Every part of the run, in a fixed order (the models draw their initial weights from the global stream)."""
    out = Path(distributed.broadcast_object(str(Path(output_dir or cfg.get("output_dir") or ".").absolute())))
    device, world = hw.torch_device, distributed.world_size()
    if cfg.train.batch_size % world:
        raise ValueError(f"train.batch_size={cfg.train.batch_size} does not split over {world} processes; use a "
                         f"multiple of {world} (each process takes batch_size/{world} items with all their "
                         f"generations)")
    # first, unless it reads the run's data: a reward that cannot be built fails before any other work
    with asked_classifiers() as asked:  # the reward classifiers it asks for, on its own data
        reward = None if reads_run_data(cfg) else build_reward(cfg)
    algorithm = instantiate(cfg.algorithm)
    with distributed.main_process_first():  # rank 0 trains and caches the tokenizer and prior; the rest read them
        data = instantiate(cfg.data)
        check_batch_fits(cfg.train.batch_size, len(data.train_labels))
        if reward is None:
            with asked_classifiers() as asked:
                reward = build_reward(cfg, data)  # on the run's one dataset, before the models
        build_classifiers(asked)  # what the reward's first call would build, here while the other ranks wait
        if algorithm.trains_on_data:  # CCA's negatives are the other classes
            check_num_classes(data.num_classes)
        tokenizer, policy, text_encoder = build_generator(cfg, data, device)
        eval_model = (build_eval_model(data, cfg.eval, cfg.cache_dir, device, reference=distributed.is_main())
                      if cfg.eval.classifier else None)  # rank 0 alone computes the judge's metrics
    inception = (build_inception_eval(data, cfg.eval.inception, cfg.cache_dir, cfg.eval.batch_size, device)
                 if cfg.eval.inception.enabled else None)
    # the frozen prior, for the KL term (or CCA's log-ratio to it): never built when beta is 0
    ref_policy = copy.deepcopy(policy).eval().requires_grad_(False) if algorithm.beta > 0 else None
    critic = torch.nn.Linear(policy.n_embd, 1).to(device) if algorithm.value_head else None
    ema = None if cfg.train.ema_decay is None else policy_ema(policy, cfg.train.ema_decay)
    trainable = nn.ModuleDict({"policy": policy, **({} if critic is None else {"critic": critic})})
    train_policy, train_critic = hw.prepare(policy), hw.prepare(critic)
    ref_policy = hw.prepare(ref_policy, trainable=False, on_cpu=cfg.train.ref_on_cpu)
    optimizer = build_optimizer(cfg.optimizer, [p for p in trainable.parameters() if p.requires_grad])
    scheduler = instantiate(cfg.scheduler, optimizer=optimizer)
    saved = trainable
    if ema is not None:
        hw.prepare(ema.module, trainable=False)
        update_after_every_step(optimizer, ema, policy)
        saved = nn.ModuleDict({**trainable, "ema": ema.module})
    checkpointer = Checkpointer(out / "checkpoints", saved, optimizer, cfg.train.checkpoint_format)
    logger = instantiate(cfg.logger)
    if distributed.is_main():  # a logger never opened writes nothing
        logger.open(out)
    sampling = scored_sampling(cfg.rollout, policy.block_size)
    return Run(cfg, hw, out, data, tokenizer, policy, ref_policy, critic, trainable, train_policy, train_critic,
               reward, eval_model, algorithm, optimizer, checkpointer, logger, rank_generators(hw.seed,
               distributed.rank()), sampling, scheduler, ema, inception, text_encoder)
