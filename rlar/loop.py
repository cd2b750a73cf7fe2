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
from tqdm.auto import tqdm

from rlar.algorithm.update import policy_update, value_advantages
from rlar.cache import atomic_torch_save
from rlar.evaluate import evaluate
from rlar.policy.prior import teacher_forced_ce
from rlar.rollout import collect_rollout
from rlar.sampling import cfg_scales
from rlar.scoring import decode_and_score

log = logging.getLogger(__name__)


def train_rl_loop(cfg: DictConfig | dict, output_dir: str | Path | None = None) -> dict:
    """Build every part from ``cfg`` and fine-tune; returns the summary (also written to ``summary.json``)."""
    cfg = cfg if isinstance(cfg, DictConfig) else OmegaConf.create(cfg)
    out = Path(output_dir or cfg.get("output_dir") or ".").absolute()
    hw = instantiate(cfg.hardware)
    hw.seed_everything()
    device = hw.torch_device

    reward_fn = instantiate(cfg.reward)  # first: a reward that cannot be built fails before any training
    data = instantiate(cfg.data)
    tokenizer = instantiate(cfg.tokenizer, data=data).to(device)
    policy = instantiate(cfg.policy, tokenizer=tokenizer, data=data).to(device)
    algorithm = instantiate(cfg.algorithm)
    # the frozen prior, for the KL term only: never built when beta is 0
    ref_policy = copy.deepcopy(policy).eval().requires_grad_(False) if algorithm.beta > 0 else None
    critic = torch.nn.Linear(policy.n_embd, 1).to(device) if algorithm.value_head else None
    params = list(policy.parameters()) + ([] if critic is None else list(critic.parameters()))
    optimizer = instantiate(cfg.optimizer, params=params)
    logger = instantiate(cfg.logger)
    logger.open(out)

    r, t = cfg.rollout, cfg.train
    G, T = algorithm.num_generations, policy.block_size
    # the distribution every log-prob is under, in rollout and update alike
    sampling = {"temperature": r.temperature, "cfg_scale": cfg_scales(T, r.cfg_scale, r.cfg_interval)}
    gens = {name: torch.Generator().manual_seed(hw.seed + i) for i, name in enumerate(("data", "sample", "update"))}

    ckpt_path = out / "checkpoints" / "last.pt"
    start, summary = 0, {}
    if cfg.resume and ckpt_path.is_file():
        state = torch.load(ckpt_path, map_location="cpu", weights_only=True)
        policy.load_state_dict(state["policy"])
        optimizer.load_state_dict(state["optimizer"])
        algorithm.load_state_dict(state["algorithm"])
        if critic is not None:
            critic.load_state_dict(state["critic"])
        for name, g in gens.items():
            g.set_state(state["rng"][name])
        torch.set_rng_state(state["rng"]["torch"])
        start, summary = state["iteration"], state["summary"]
        log.info("resumed from %s at iteration %d", ckpt_path, start)

    def evaluation():
        return evaluate(policy, tokenizer, reward_fn, data, cfg.eval, sampling, device)

    def save(iteration: int):
        atomic_torch_save({"policy": policy.state_dict(), "optimizer": optimizer.state_dict(),
                           "algorithm": algorithm.state_dict(), "iteration": iteration, "summary": summary,
                           "critic": None if critic is None else critic.state_dict(),
                           "rng": {**{n: g.get_state() for n, g in gens.items()}, "torch": torch.get_rng_state()}},
                          ckpt_path)

    batches = data.batches(t.batch_size, gens["data"])
    if start == 0:
        before = evaluation()
        summary = {"eval_reward_before": before["eval/reward"], "history": [{"iteration": 0, **before}]}
        logger.scalars(before, 0)
        log.info("prior: eval reward %.5f", before["eval/reward"])
        for i in tqdm(range(t.warmup_steps), desc="supervised warm-up", leave=False, disable=not t.warmup_steps):
            images, labels, _ = next(batches)
            loss = teacher_forced_ce(policy.train(), tokenizer.encode_indices(images.to(device)), labels.to(device))
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            summary["warmup_ce"] = loss.item()
            logger.scalars({"warmup/ce": loss.item()}, i)

    time_totals: dict[str, float] = {}
    progress = tqdm(range(start, t.iterations), initial=start, total=t.iterations, desc="RL", dynamic_ncols=True)
    for it in progress:
        step = it + 1
        images, labels, indices = (x.to(device) for x in next(batches))  # [B, C, H, W], [B], [B]
        timings = {}

        tic = time.perf_counter()
        policy.eval()
        with hw.autocast():
            rollout = collect_rollout(policy, tokenizer.encode_indices(images), labels, G, r, gens["sample"])
        timings["time/rollout"] = time.perf_counter() - tic

        samples, rewards, components, reward_metrics = decode_and_score(
            tokenizer, reward_fn, rollout.tokens, images.repeat_interleave(G, 0), {"labels": rollout.labels},
            t.score_chunk_size)  # samples [B*G, C, H, W] in [-1, 1], rewards [B*G]
        timings.update({k: reward_metrics.pop(k) for k in ("time/decode", "time/reward")})

        tic = time.perf_counter()
        keys = (labels if algorithm.stats_key == "class" else indices).repeat_interleave(G)
        adv, keep, adv_stats = algorithm.advantages(rewards, keys)
        valid = rewards.isfinite() & keep  # a NaN reward is excluded from the update, and counted
        rollout.mask = rollout.mask & valid[:, None]
        returns = None
        if critic is not None:
            adv, returns = value_advantages(policy, critic, algorithm, rollout, rewards, sampling)
        stats = policy_update(policy, optimizer, algorithm, rollout, adv, sampling, t.max_grad_norm, gens["update"],
                              hw.autocast, ref_policy, critic, returns) if valid.any() else {}
        timings["time/update"] = time.perf_counter() - tic

        finite = rewards.isfinite()
        metrics = {"reward/mean": float(rewards[finite].mean()) if finite.any() else float("nan"),
                   "reward/std": float(rewards[finite].std()) if finite.sum() > 1 else 0.0,
                   **{f"reward/{k}": float(v[v.isfinite()].mean()) for k, v in components.items()},
                   **reward_metrics, **adv_stats, **stats, **timings,
                   "perf/tokens_per_s": float(rollout.mask.sum()) / timings["time/rollout"]}
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
    summary.update({"eval_reward_after": final["eval/reward"], "iterations": t.iterations,
                    "timings": {key: total / ran for key, total in time_totals.items()},
                    "output_dir": str(out), "tokenizer": tokenizer.source,
                    "tokenizer_psnr_db": tokenizer.metrics.get("psnr_db")})
    (out / "summary.json").write_text(json.dumps(summary, indent=2))
    logger.close()
    log.info("eval reward: prior %.5f -> after RL %.5f; outputs in %s",
             summary["eval_reward_before"], summary["eval_reward_after"], out)
    return summary
