"""The RL loop: rollout -> decode -> reward -> advantages -> update, with logging, checkpoints and evaluation."""

from __future__ import annotations

import copy
import json
import logging
import time
from pathlib import Path

import torch
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf
from torch import nn
from tqdm.auto import tqdm

from rlar.algorithm.update import policy_update, value_advantages
from rlar.eval.evaluate import evaluate, headline
from rlar.eval.model import build_eval_model
from rlar.policy.prior import teacher_forced_ce
from rlar.reward.scoring import decode_and_score
from rlar.rollout.collect import collect_rollout
from rlar.rollout.sampling import cfg_scales
from rlar.runtime import distributed
from rlar.runtime.checkpoint import Checkpointer
from rlar.schedule.decoder import ScheduleDecoder

log = logging.getLogger(__name__)


PER_RANK_RNG = ("sample", "update")  # streams that differ between ranks (the data stream is shared)


def rank_generators(seed: int, rank: int) -> dict[str, torch.Generator]:
    """The loop's random streams: the data order is the same on every rank (each takes its slice of one global
    batch); sampling and minibatch shuffles differ per rank. Rank 0's streams are those of a single process."""
    seeds = {"data": seed, "sample": seed + 1 + 1000 * rank, "update": seed + 2 + 1000 * rank}
    return {name: torch.Generator().manual_seed(s) for name, s in seeds.items()}


def restore_rng(gens: dict, saved: dict, start: int, seed: int) -> None:
    """Set the streams saved at ``start``; per-rank streams saved by another number of processes are re-seeded."""
    rank, world = distributed.rank(), distributed.world_size()
    gens["data"].set_state(saved["data"])
    if len(saved["torch"]) == world:
        for name in PER_RANK_RNG:
            gens[name].set_state(saved[name][rank])
        torch.set_rng_state(saved["torch"][rank])
        return
    log.warning("checkpoint written by %d processes, resumed on %d: per-rank sampling streams re-seeded",
                len(saved["torch"]), world)
    for name, g in rank_generators(seed + 7919 * start, rank).items():
        if name in PER_RANK_RNG:
            gens[name].set_state(g.get_state())


def earlier_timings(out: Path) -> dict:
    """The ``timings`` of the summary a finished run wrote before (none: ``{}``)."""
    path = out / "summary.json"
    return json.loads(path.read_text()).get("timings", {}) if path.is_file() else {}


def train_rl_loop(cfg: DictConfig | dict, output_dir: str | Path | None = None) -> dict:
    """Build every part from ``cfg`` and fine-tune; returns the summary (also written to ``summary.json``).

    Under torchrun (``hardware.strategy`` ddp or fsdp) every rank runs this; rank 0 alone writes the output dir.
    """
    cfg = cfg if isinstance(cfg, DictConfig) else OmegaConf.create(cfg)
    hw = instantiate(cfg.hardware)
    hw.setup()
    try:
        return _train(cfg, hw, output_dir)
    finally:
        hw.teardown()


def _train(cfg: DictConfig, hw, output_dir) -> dict:
    out = Path(distributed.broadcast_object(str(Path(output_dir or cfg.get("output_dir") or ".").absolute())))
    device, rank, world, main = hw.torch_device, distributed.rank(), distributed.world_size(), distributed.is_main()
    r, t = cfg.rollout, cfg.train
    if t.batch_size % world:
        raise ValueError(f"train.batch_size={t.batch_size} does not split over {world} processes; use a multiple "
                         f"of {world} (each process takes batch_size/{world} items with all their generations)")
    local_batch = t.batch_size // world

    def this_rank(x: torch.Tensor) -> torch.Tensor:
        """This rank's items of a global batch, on its device: ``[B / world, ...]``, each with all its generations."""
        return x[rank * local_batch:][:local_batch].to(device)

    reward_fn = instantiate(cfg.reward)  # first: a reward that cannot be built fails before any training
    with distributed.main_process_first():  # rank 0 trains and caches the tokenizer and prior; the rest read them
        data = instantiate(cfg.data)
        tokenizer = instantiate(cfg.tokenizer, data=data).to(device)
        policy = instantiate(cfg.policy, tokenizer=tokenizer, data=data).to(device)
        if r.mode == "schedule":  # the generator frozen, a decoding-schedule network the policy (rlar.schedule)
            policy = ScheduleDecoder(policy, **cfg.schedule).to(device)
        eval_model = build_eval_model(data, cfg.eval, cfg.cache_dir, device) if cfg.eval.classifier else None
    algorithm = instantiate(cfg.algorithm)
    # the frozen prior, for the KL term only: never built when beta is 0
    ref_policy = copy.deepcopy(policy).eval().requires_grad_(False) if algorithm.beta > 0 else None
    critic = torch.nn.Linear(policy.n_embd, 1).to(device) if algorithm.value_head else None
    trainable = nn.ModuleDict({"policy": policy, **({} if critic is None else {"critic": critic})})
    # what the update calls: DDP wrappers, or the modules themselves (sharded in place by FSDP2)
    train_policy, train_critic = hw.prepare(policy), hw.prepare(critic)
    hw.prepare(ref_policy, trainable=False)
    optimizer = instantiate(cfg.optimizer, params=[p for p in trainable.parameters() if p.requires_grad])
    checkpointer = Checkpointer(out / "checkpoints", trainable, optimizer, t.checkpoint_format)
    logger = instantiate(cfg.logger)
    if main:  # a logger never opened writes nothing
        logger.open(out)

    G, T = algorithm.num_generations, policy.block_size
    # the distribution every log-prob is under, in rollout and update alike
    sampling = {"temperature": r.temperature, "cfg_scale": cfg_scales(T, r.cfg_scale, r.cfg_interval)}
    gens = rank_generators(hw.seed, rank)

    start, summary = 0, {}
    state = checkpointer.load() if cfg.resume else None
    if state is not None:
        algorithm.load_state_dict(state["algorithm"])
        restore_rng(gens, state["rng"], state["iteration"], hw.seed)
        start, summary = state["iteration"], state["summary"]
        log.info("resumed from %s at iteration %d", checkpointer.record_path, start)

    def evaluation():
        return evaluate(policy, tokenizer, reward_fn, data, cfg.eval, sampling, device, hw.autocast, eval_model)

    def save(iteration: int):
        rng = {"data": gens["data"].get_state(),
               **{name: distributed.gather_objects(gens[name].get_state()) for name in PER_RANK_RNG},
               "torch": distributed.gather_objects(torch.get_rng_state())}
        checkpointer.save({"algorithm": algorithm.state_dict(), "iteration": iteration, "summary": summary,
                           "rng": rng})

    batches = data.batches(t.batch_size, gens["data"])
    if start == 0:
        before = evaluation()
        summary = {**headline(before, "before"), "history": [{"iteration": 0, **before}]}
        logger.scalars(before, 0)
        log.info("prior: eval reward %.5f", before["eval/reward"])
        for i in tqdm(range(t.warmup_steps), desc="supervised warm-up", leave=False,
                      disable=not (t.warmup_steps and main)):
            all_images, all_labels, _ = next(batches)
            images, labels = this_rank(all_images), this_rank(all_labels)
            loss = teacher_forced_ce(train_policy.train(), tokenizer.encode_indices(images), labels)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            summary["warmup_ce"] = loss.item()
            logger.scalars({"warmup/ce": loss.item()}, i)

    time_totals: dict[str, float] = {}
    progress = tqdm(range(start, t.iterations), initial=start, total=t.iterations, desc="RL", dynamic_ncols=True,
                    disable=not main)
    for it in progress:
        step = it + 1
        all_images, all_labels, all_indices = next(batches)  # the global batch: [B, C, H, W], [B], [B]
        images, labels = this_rank(all_images), this_rank(all_labels)  # [b, C, H, W], [b], b = B / world
        timings = {}

        tic = time.perf_counter()
        policy.eval()
        with hw.autocast():
            rollout = collect_rollout(policy, tokenizer.encode_indices(images), labels, G, r, gens["sample"])
        timings["time/rollout"] = time.perf_counter() - tic

        meta = {"labels": rollout.labels, **({} if rollout.steps is None else {"steps": rollout.steps})}
        samples, rewards, components, reward_metrics = decode_and_score(
            tokenizer, reward_fn, rollout.tokens, images.repeat_interleave(G, 0), meta,
            t.score_chunk_size)  # samples [B*G, C, H, W] in [-1, 1], rewards [B*G]
        timings.update({k: reward_metrics.pop(k) for k in ("time/decode", "time/reward")})

        tic = time.perf_counter()
        # advantages over the global batch, the same on every rank (group and batch statistics alike)
        global_rewards = distributed.gather_rows(rewards)  # [B*G]
        keys = (all_labels if algorithm.stats_key == "class" else all_indices).to(device).repeat_interleave(G)
        adv, keep, adv_stats = algorithm.advantages(global_rewards, keys)
        mine = slice(rank * len(rewards), (rank + 1) * len(rewards))
        adv, keep = adv[mine], keep[mine]
        valid = rewards.isfinite() & keep  # a NaN reward is excluded from the update, and counted
        rollout.mask = rollout.mask & valid[:, None]
        returns = None
        if critic is not None:
            adv, returns = value_advantages(policy, critic, algorithm, rollout, rewards, sampling)
        stats = policy_update(train_policy, optimizer, algorithm, rollout, adv, sampling, t.max_grad_norm,
                              gens["update"], hw.autocast, ref_policy, train_critic, returns
                              ) if distributed.any_rank(bool(valid.any()), device) else {}
        timings["time/update"] = time.perf_counter() - tic

        finite = global_rewards.isfinite()
        components = {k: distributed.gather_rows(v) for k, v in components.items()}
        metrics = {"reward/mean": float(global_rewards[finite].mean()) if finite.any() else float("nan"),
                   "reward/std": float(global_rewards[finite].std()) if finite.sum() > 1 else 0.0,
                   **{f"reward/{k}": float(v[v.isfinite()].mean()) for k, v in components.items()},
                   **distributed.mean_over_ranks({**reward_metrics, **stats}, device), **adv_stats, **timings,
                   "perf/tokens_per_s": rollout.sampled_tokens / timings["time/rollout"],
                   **({} if rollout.steps is None else {"rollout/steps": float(rollout.steps.float().mean())})}
        logger.scalars(metrics, step)
        for key, seconds in timings.items():
            time_totals[key] = time_totals.get(key, 0.0) + seconds
        if logger.image_every and (step % logger.image_every == 0 or step == 1):
            logger.groups("samples/input_then_group", images, samples, step)
        progress.set_postfix(reward=f"{metrics['reward/mean']:.4f}")

        if step % cfg.eval.every == 0 or step == t.iterations:
            result = evaluation()
            summary["history"].append({"iteration": step, **result})
            logger.scalars(result, step)
        if step % t.checkpoint_every == 0 or step == t.iterations:
            save(step)
    progress.close()

    final = summary["history"][-1]
    ran = max(1, t.iterations - start)
    # a finished run started again trains nothing: it keeps the timings of the iterations it ran before
    timings = {key: total / ran for key, total in time_totals.items()} or earlier_timings(out)
    summary.update({**headline(final, "after"), "iterations": t.iterations, "timings": timings,
                    "output_dir": str(out), "tokenizer": tokenizer.source,
                    "tokenizer_psnr_db": tokenizer.metrics.get("psnr_db"),
                    "eval_classifier_accuracy": eval_model.classifier_accuracy if eval_model else None,
                    "world_size": world, "strategy": hw.strategy})
    if hw.strategy == "ddp":  # replicas must still be identical: a check that gradients were synchronised
        summary["replica_max_abs_diff"] = distributed.replica_divergence(trainable, device)
    if t.checkpoint_format == "sharded":
        checkpointer.export_policy(out / "checkpoints" / "policy.pt")
    if main:
        (out / "summary.json").write_text(json.dumps(summary, indent=2))
    logger.close()
    log.info("eval reward: prior %.5f -> after RL %.5f; outputs in %s",
             summary["eval_reward_before"], summary["eval_reward_after"], out)
    return summary
