"""The RL loop: rollout -> decode -> reward -> advantages -> update, with logging, checkpoints and evaluation."""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path

import torch
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf
from tqdm.auto import tqdm

from rlar.algorithm.update import Rollout, policy_update
from rlar.cache import atomic_torch_save
from rlar.evaluate import evaluate
from rlar.sampling import sample_multiple_generations

log = logging.getLogger(__name__)


def train_rl_loop(cfg: DictConfig | dict, output_dir: str | Path | None = None) -> dict:
    """Build every part from ``cfg`` and fine-tune; returns the summary (also written to ``summary.json``)."""
    cfg = cfg if isinstance(cfg, DictConfig) else OmegaConf.create(cfg)
    out = Path(output_dir or cfg.get("output_dir") or ".").absolute()
    hw = instantiate(cfg.hardware)
    hw.seed_everything()
    device = hw.torch_device

    data = instantiate(cfg.data)
    tokenizer = instantiate(cfg.tokenizer, data=data).to(device)
    policy = instantiate(cfg.policy, tokenizer=tokenizer, data=data).to(device)
    algorithm = instantiate(cfg.algorithm)
    reward_fn = instantiate(cfg.reward)
    optimizer = instantiate(cfg.optimizer, params=policy.parameters())
    logger = instantiate(cfg.logger)
    logger.open(out)

    r, t = cfg.rollout, cfg.train
    G, T = algorithm.num_generations, policy.block_size
    sampling = {"temperature": r.temperature, "cfg_scale": r.cfg_scale}  # the distribution log-probs are under
    gens = {name: torch.Generator().manual_seed(hw.seed + i) for i, name in enumerate(("data", "sample", "update"))}

    ckpt_path = out / "checkpoints" / "last.pt"
    start, summary = 0, {}
    if cfg.resume and ckpt_path.is_file():
        state = torch.load(ckpt_path, map_location="cpu", weights_only=True)
        policy.load_state_dict(state["policy"])
        optimizer.load_state_dict(state["optimizer"])
        for name, g in gens.items():
            g.set_state(state["rng"][name])
        torch.set_rng_state(state["rng"]["torch"])
        start, summary = state["iteration"], state["summary"]
        log.info("resumed from %s at iteration %d", ckpt_path, start)

    def evaluation():
        return evaluate(policy, tokenizer, reward_fn, data, cfg.eval, sampling, device)

    def save(iteration: int):
        atomic_torch_save({"policy": policy.state_dict(), "optimizer": optimizer.state_dict(),
                           "iteration": iteration, "summary": summary,
                           "rng": {**{n: g.get_state() for n, g in gens.items()}, "torch": torch.get_rng_state()}},
                          ckpt_path)

    if start == 0:
        before = evaluation()
        summary = {"eval_reward_before": before["eval/reward"], "history": [{"iteration": 0, **before}]}
        logger.scalars(before, 0)
        log.info("prior: eval reward %.5f", before["eval/reward"])

    time_totals: dict[str, float] = {}
    batches = data.batches(t.batch_size, gens["data"])
    progress = tqdm(range(start, t.iterations), initial=start, total=t.iterations, desc="RL", dynamic_ncols=True)
    for it in progress:
        step = it + 1
        images, labels = (x.to(device) for x in next(batches))  # [B, C, H, W], [B]
        timings = {}

        tic = time.perf_counter()
        policy.eval()
        prefix = tokenizer.encode_indices(images)[:, : r.prefix_len]  # [B, k], k = 0 by default
        with hw.autocast():
            tokens, old_logp = sample_multiple_generations(
                policy, (prefix, labels), T, G, top_k=r.top_k, top_p=r.top_p, generator=gens["sample"], **sampling
            )  # [B*G, T] each
        timings["time/rollout"] = time.perf_counter() - tic

        tic = time.perf_counter()
        samples = tokenizer.decode_code(tokens)  # [B*G, C, H, W] in [-1, 1]
        timings["time/decode"] = time.perf_counter() - tic

        tic = time.perf_counter()
        rewards, components = reward_fn(samples, images.repeat_interleave(G, 0), {"labels": labels})  # [B*G]
        timings["time/reward"] = time.perf_counter() - tic

        tic = time.perf_counter()
        adv, adv_stats = algorithm.advantages(rewards)
        valid = rewards.isfinite()  # a NaN reward is excluded from the update, and counted
        mask = (torch.arange(T, device=device) >= r.prefix_len)[None] & valid[:, None]  # [B*G, T]
        rollout = Rollout(tokens, old_logp, labels.repeat_interleave(G), mask)
        stats = policy_update(policy, optimizer, algorithm, rollout, adv, sampling, t.max_grad_norm,
                              gens["update"], hw.autocast) if valid.any() else {}
        timings["time/update"] = time.perf_counter() - tic

        metrics = {"reward/mean": float(rewards[valid].mean()) if valid.any() else float("nan"),
                   "reward/std": float(rewards[valid].std()) if valid.sum() > 1 else 0.0,
                   **{f"reward/{k}": float(v[v.isfinite()].mean()) for k, v in components.items()},
                   **adv_stats, **stats, **timings,
                   "perf/tokens_per_s": tokens[:, r.prefix_len :].numel() / timings["time/rollout"]}
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
                    "tokenizer_psnr_db": tokenizer.metrics["psnr_db"]})
    (out / "summary.json").write_text(json.dumps(summary, indent=2))
    logger.close()
    log.info("eval reward: prior %.5f -> after RL %.5f; outputs in %s",
             summary["eval_reward_before"], summary["eval_reward_after"], out)
    return summary
