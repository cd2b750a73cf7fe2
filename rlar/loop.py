"""The RL loop: rollout -> decode -> reward -> advantages -> update, with logging, checkpoints and evaluation (an
algorithm that trains on data pairs, CCA, updates on the batch's codes instead: ``pair_iteration``).

``rlar.build`` makes the parts (a ``Run``); this module runs them: the evaluation of the prior and the supervised
warm-up, the iterations, and the summary.
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import warnings
from pathlib import Path

import torch
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf
from tqdm.auto import tqdm

from rlar.algorithm.pair_update import pair_update
from rlar.algorithm.update import (
    clip_and_step,
    policy_update,
    recomputes_old_logprobs,
    reward_kl,
    stepped_params,
    update_recomputes,
    value_advantages,
)
from rlar.build import Run, build_run
from rlar.config.rerun import record_config
from rlar.config.validate import check_config
from rlar.eval.evaluate import evaluate, headline
from rlar.policy.conditioning import Condition, as_condition
from rlar.policy.prior import teacher_forced_ce
from rlar.reward.mixture import zscored
from rlar.reward.scoring import SERVICE_COUNTS, decode_and_score
from rlar.rollout.collect import collect_rollout
from rlar.rollout.sampling import truncated
from rlar.rollout.types import Rollout
from rlar.run_record import rescue_save, resume, save, saved_if_it_fails
from rlar.runtime import distributed
from rlar.runtime.atomic_files import atomic_write_text
from rlar.runtime.clock import phase_time
from rlar.runtime.data_parallel import gathered
from rlar.runtime.logger import images_due
from rlar.runtime.run_lock import run_lock
from rlar.runtime.stop_signals import Stopped, StopRequest
from rlar.text.conditions import item_conditions

log = logging.getLogger(__name__)
UNSCORED = "unscored_iterations"  # the summary's count of the last iterations without a finite reward, for a resume


def train_rl_loop(cfg: DictConfig | dict, output_dir: str | Path | None = None) -> dict:
    """Fine-tune from Python as ``rlar-run`` does (docs/api.md); returns the summary. The config is checked (a
    ``ConfigError`` names the value and the fix) and recorded in ``OUT/.hydra/config.yaml``, where ``rlar-eval`` and
    ``rlar-export`` read it; a run of another config already in ``OUT`` is refused (``resume=false`` sets it aside).
    ``OUT``: ``output_dir``, else ``cfg.output_dir``, else ``outputs/<name>``."""
    cfg = cfg if isinstance(cfg, DictConfig) else OmegaConf.create(cfg)
    out = Path(output_dir or cfg.get("output_dir") or Path("outputs") / cfg.name)
    check_config(cfg)
    if distributed.env_rank() == 0:
        record_config(cfg, out)
    return fine_tune(cfg, out)


def fine_tune(cfg: DictConfig, out: str | Path) -> dict:
    """Build every part from ``cfg`` (checked, and recorded in ``out``: ``rlar-run``, :func:`train_rl_loop`) and
    fine-tune in ``out``; returns the summary (also written to ``summary.json``).

    Under torchrun (``hardware.strategy`` ddp or fsdp) every rank runs this; rank 0 alone writes the output dir.
    """
    hw = instantiate(cfg.hardware)
    hw.setup()
    out = Path(out)
    try:
        with run_lock(out) if distributed.is_main() else contextlib.nullcontext():
            run = build_run(cfg, hw, out)
            try:
                summary = train(run)
            finally:
                run.reward.close()  # a remote reward's threads and HTTP client
    except BaseException:
        hw.teardown(clean=False)
        raise
    hw.teardown()
    return summary


def train(run: Run) -> dict:
    """Evaluate the prior and warm up (a fresh run), or resume; iterate; evaluate and save on schedule. A stop signal
    at any moment saves at the end of the current step (the prior's evaluation, a warm-up step or an iteration)."""
    t = run.cfg.train
    time_totals: dict[str, float] = {}
    with StopRequest().listening() as stop:  # before any work: no signal is lost between two steps
        start, warmed, summary = resume(run) if run.cfg.resume else (0, 0, {})
        resumed = bool(summary)  # a checkpoint holds the run as it stands now
        # the checkpoint resumed is the run as it stands when its warm-up is done: a failure there saves nothing again
        saved_at = start if summary and warmed == t.warmup_steps else None
        if not summary:  # a fresh run
            summary = evaluate_prior(run)
            stop_if_requested(run, stop, summary, 0, 0, "the prior's evaluation")
        elif (pending := summary.get("pending_evaluation")) is not None or (
                start == t.iterations and summary["history"][-1]["iteration"] < start):
            # saved when its evaluation failed (pending already), or stopped at what is now the last iteration, whose
            # evaluation a straight run makes
            evaluate_into(run, summary, start if pending is None else pending, rescue=pending is None)
            save(run, start, summary, warmed)  # resolved: a later start does not evaluate it again
            stop_if_requested(run, stop, summary, start, warmed, f"the evaluation of iteration {start}", saved=True)
        # the data stream is a function of its seed and of the batches taken: a resumed run continues it exactly
        batches = run.data.batches(t.batch_size, run.generators["data"], start=warmed + start, share=run.share)
        warm_up(run, batches, summary, warmed, stop, saved=resumed)
        with tqdm(range(start, t.iterations), initial=start, total=t.iterations, desc="RL", dynamic_ncols=True,
                  disable=not distributed.is_main()) as progress:
            iterations(run, batches, progress, summary, time_totals, stop, saved_at)
    return finish(run, summary, time_totals, start)


def iterations(run: Run, batches, progress, summary: dict, time_totals: dict, stop: StopRequest,
               saved_at: int | None) -> None:
    """The RL iterations of ``progress``, evaluating and saving on schedule; on a stop signal, save and raise
    ``Stopped`` at the end of the iteration. On one process a failure before an iteration's first optimizer step (its
    batch, rollout, reward or the update's first backward pass: a reward server gone, an out-of-memory error), and on
    any number the limit of iterations without a finite reward, save the run first (``saved_if_it_fails``,
    ``rescue_save``), unless the checkpoint holds it already (``saved_at``: the iteration of the checkpoint, when it
    holds the run as it stands then; None: none does)."""
    t = run.cfg.train
    unscored = summary.get(UNSCORED, 0)  # iterations in a row with no finite reward (kept by the checkpoint)
    shown = progress_metrics(run)
    for it in progress:
        step = it + 1
        evaluates = step % run.cfg.eval.every == 0 or step == t.iterations
        before_update = saved_if_it_fails(run, summary, step - 1, saved_at)
        if run.algorithm.trains_on_data:  # CCA: the batch's data pairs, nothing sampled or scored
            metrics = pair_iteration(run, batches, step, before_update)
        else:
            metrics = iteration(run, batches, step, before_update)
            try:
                unscored = check_scored(unscored, metrics, t.max_nonfinite_iterations, step)
            except distributed.RaisedOnEveryRank as error:  # counted on the global batch
                summary[UNSCORED] = t.max_nonfinite_iterations
                rescue_save(run, summary, step, f"iteration {step} was the last one without a finite reward allowed",
                            pending=step if evaluates else None, error=error)
                raise
            summary[UNSCORED] = unscored
        for key, seconds in metrics.items():
            if key.startswith("time/"):
                time_totals[key] = time_totals.get(key, 0.0) + seconds
        progress.set_postfix({key: f"{metrics[key]:.4g}" for key in shown if key in metrics})
        if evaluates:
            evaluate_into(run, summary, step)
        due = step % t.checkpoint_every == 0 or step == t.iterations
        if due:
            save(run, step, summary, t.warmup_steps)
            saved_at = step
        stop_if_requested(run, stop, summary, step, t.warmup_steps, f"iteration {step}", saved=due)


def evaluate_into(run: Run, summary: dict, step: int, rescue: bool = True) -> None:
    """The evaluation after iteration ``step``, into the summary's history and the logger. A failing evaluation first
    saves the run as it is (``rescue``; on one process, or under torchrun where every rank raises the error:
    ``rescue_save``), the evaluation marked pending (``summary["pending_evaluation"]``): the iterations since the last
    checkpoint are kept, and the same command evaluates first when it resumes."""
    try:
        result = evaluation(run)
    except Exception as error:
        if rescue:
            rescue_save(run, summary, step, f"the evaluation after iteration {step} failed", pending=step,
                        error=error)
        raise
    summary.pop("pending_evaluation", None)
    summary["history"].append({"iteration": step, **result})
    run.logger.scalars(result, step)


def stop_if_requested(run: Run, stop: StopRequest, summary: dict, iteration: int, warmed: int, after: str,
                      saved: bool = False) -> None:
    """Where a stop signal reached any rank: save the run as it is after ``after`` (unless ``saved`` already) and
    raise ``Stopped``; the same command resumes from there."""
    if not distributed.any_rank(stop.received is not None, run.device):
        return
    if not saved:
        save(run, iteration, summary, warmed)
    run.logger.close()
    raise Stopped(f"stopped by {stop.received or 'a signal on another rank'} after {after}: checkpoint saved in "
                  f"{run.checkpointer.record_path}; run the same command to resume")


def progress_metrics(run: Run) -> tuple[str, ...]:
    """What the progress bar shows after each iteration: CCA's loss, the rollout's mean reward, or, for a mix that
    z-scores its terms over the batch (its mean is 0 by construction), each term's own mean."""
    if run.algorithm.trains_on_data:
        return ("loss/cca",)
    if zscored(run.cfg.reward):  # a mix's weights name its components; a remote client's, the servers' it weighs
        return tuple(f"reward/{name}" for name in run.cfg.reward.weights)
    return ("reward/mean",)


def check_scored(unscored: int, metrics: dict[str, float], limit: int, step: int) -> int:
    """The count of iterations in a row with no finite reward, this one included; raises at ``limit`` (on every rank:
    ``reward/mean`` is the global batch's)."""
    unscored = unscored + 1 if math.isnan(metrics["reward/mean"]) else 0
    if unscored >= limit:
        raise distributed.RaisedOnEveryRank(
            f"iteration {step}: no reward was finite (NaN or inf) for {unscored} iterations in a row "
            f"(train.max_nonfinite_iterations={limit}); check the reward model (reward=...) or its server, and the "
            "policy (rollout/nonfinite_frac: the samples drawn from non-finite logits), or raise "
            "train.max_nonfinite_iterations")
    return unscored


def batch_conditions(run: Run, labels: torch.Tensor, captions: list[str] | None) -> Condition:
    """The conditions of this rank's items of a batch (``labels [b]``, their ``captions``, ``data.captions_of`` the
    batch's indices): their class labels, or with ``run.text_encoder`` the features of their captions."""
    return item_conditions(run.text_encoder, labels, captions, run.device)


def iteration(run: Run, batches, step: int, before_update) -> dict[str, float]:
    """One RL iteration on the next global batch of ``batches`` ``(this rank's images [b, C, H, W] (None: data without
    images), labels [B], indices [B])``; logs and returns its metrics. With captions, the items' prompts reach the
    reward (and, with a text encoder, condition the policy). ``before_update``: the context of the batch, the rollout,
    the reward and the update (``saved_if_it_fails``: a failure before the update's first optimizer step saves the
    iteration before)."""
    G = run.algorithm.num_generations
    timings = {}
    with before_update:
        images, all_labels, all_indices = next(batches)
        labels = run.this_rank(all_labels)  # [b], b = B / world
        images = None if images is None else images.to(run.device)  # [b, C, H, W]
        prompts = run.data.captions_of(run.this_rank(all_indices))  # b captions, or None

        tic = phase_time(run.device)  # the rollout's time includes encoding its captions
        condition = batch_conditions(run, labels, prompts)  # [b] class labels, or caption features
        run.policy.eval()
        with run.hw.autocast(), gathered(run.policy):  # FSDP2: each block's weights gathered once per rollout
            codes = None if images is None else run.tokenizer.encode_indices(images)  # [b, T]
            rollout = collect_rollout(run.policy, codes, condition, G, run.cfg.rollout, run.generators["sample"])
        timings["time/rollout"] = phase_time(run.device) - tic
        sampled_tokens = rollout.sampled_tokens  # before the rows without a finite reward leave the mask

        meta = reward_meta(rollout, prompts, G, condition)
        samples, rewards, components, reward_metrics = decode_and_score(
            run.tokenizer, run.reward, rollout.tokens, None if images is None else images.repeat_interleave(G, 0),
            meta, run.cfg.train.score_chunk_size)  # samples [b*G, C, H, W] in [-1, 1], rewards [b*G]
        timings.update({k: reward_metrics.pop(k) for k in ("time/decode", "time/reward")})
        rewards, reward_metrics["rollout/nonfinite_frac"] = drop_nonfinite_draws(rollout, rewards, step)

        tic = phase_time(run.device)
        global_rewards = distributed.gather_rows(rewards)  # [B*G]
        adv, returns, valid, adv_stats = advantages(run, rollout, rewards, global_rewards, all_labels, all_indices)
        updates = distributed.any_rank(bool(valid.any()), run.device)
        stats = update(run, rollout, adv, returns) if updates else {}
        timings["time/update"] = phase_time(run.device) - tic
    lr = run.scheduler.get_last_lr()[0]  # the lr of this iteration's optimizer steps
    step_schedule(run.scheduler, updates)

    metrics = iteration_metrics(global_rewards, components, {**reward_metrics, **stats, "optimizer/lr": lr},
                                adv_stats, timings, rollout, sampled_tokens, run.device)
    run.logger.scalars(metrics, step)
    if images is not None and images_due(run.logger.image_every, step):
        run.logger.groups("samples/input_then_group", images, samples, step)
    return metrics


def drop_nonfinite_draws(rollout: Rollout, rewards: torch.Tensor, step: int) -> tuple[torch.Tensor, float]:
    """``(rewards [N], NaN for each sample whose sampling log-probs were not finite; the fraction of such samples)``.
    Such a sample was drawn from NaN or inf logits (overflowed weights or activations), from no distribution: it
    leaves the advantages as an unscored sample does, with a warning; its log-probs are zeroed (masked out, they
    would still turn the masked sums of the loss into NaN), and ``rollout.nonfinite`` keeps it out of the update's
    passes (on the same weights its logits are non-finite again)."""
    broken = ~rollout.logprobs.isfinite().all(-1)  # [N]
    rollout.logprobs = rollout.logprobs.masked_fill(broken[:, None], 0.0)
    rollout.nonfinite = broken
    count = int(broken.sum())
    if count:
        log.warning("iteration %d: %d of %d samples were drawn from non-finite logits (NaN or inf) and are left out "
                    "of the update; if it persists, lower optimizer.lr or set train.max_grad_norm", step, count,
                    len(broken))
    return rewards.masked_fill(broken, float("nan")), count / len(broken)


def step_schedule(scheduler, updated: bool) -> None:
    """Step the learning-rate schedule: once per iteration, whether or not the update ran (an iteration without a
    finite reward skips it, and PyTorch's warning that the schedule moved before the optimizer would mislead)."""
    with warnings.catch_warnings():
        if not updated:
            warnings.filterwarnings("ignore", message=r"Detected call of `lr_scheduler\.step\(\)` before")
        scheduler.step()


def reward_meta(rollout: Rollout, prompts: list[str] | None, num_generations: int,
                items: Condition | torch.Tensor | None = None) -> dict:
    """What the reward reads beside the images: ``labels [N]``, ``steps [N]`` (parallel decoders) and, for data
    with captions, ``prompts`` (N: each item's caption repeated for its G samples). ``items``: the items'
    conditions before ``rollout.label_dropout`` (``[b]``); a sample it dropped to the null condition saw neither
    class nor caption, so its prompt is None (absent), as its label is -1."""
    meta = {"labels": rollout.labels, **({} if rollout.steps is None else {"steps": rollout.steps})}
    if prompts is not None:
        repeated = [p for p in prompts for _ in range(num_generations)]
        if items is not None and rollout.condition is not None:
            dropped = dropped_rows(as_condition(items), rollout.condition, num_generations)  # [N]
            repeated = [None if d else p for p, d in zip(repeated, dropped, strict=True)]
        meta["prompts"] = repeated
    return meta


def dropped_rows(items: Condition, rows: Condition, num_generations: int) -> list[bool]:
    """``[N]``: whether each of ``rows`` (the G of an item adjacent) has the null condition where its item's
    ``items [b]`` had another (condition dropout)."""
    before = items.repeat_interleave(num_generations)  # [N]
    if rows.is_text:
        return (rows.null & ~before.null).tolist()
    return ((rows.labels < 0) & (before.labels >= 0)).tolist()


def pair_iteration(run: Run, batches, step: int, before_update) -> dict[str, float]:
    """One iteration of an algorithm that trains on data pairs (CCA) on the next global batch of ``batches`` ``(this
    rank's images [b, C, H, W], labels [B], indices [B])``: this rank's images' codes under their labels and under
    mismatched ones, one optimizer step; logs and returns its metrics. ``before_update``: the context of the batch,
    its codes, its negatives and the update (``saved_if_it_fails``)."""
    with before_update:
        images, all_labels, _ = next(batches)
        images, labels = images.to(run.device), run.this_rank(all_labels)  # [b, C, H, W], [b]
        tic = phase_time(run.device)
        codes = run.tokenizer.encode_indices(images)  # [b, T]
        negatives = run.algorithm.negatives(labels, run.data.num_classes, run.generators["update"])  # [b]
        stats = pair_update(run.train_policy, run.ref_policy, run.optimizer, run.algorithm, codes, labels, negatives,
                            run.cfg.train.max_grad_norm, run.hw.autocast)
    timings = {"time/update": phase_time(run.device) - tic}
    lr = run.scheduler.get_last_lr()[0]
    run.scheduler.step()
    metrics = {**distributed.mean_over_ranks({**stats, "optimizer/lr": lr}, run.device), **timings}
    run.logger.scalars(metrics, step)
    return metrics


def advantages(run: Run, rollout: Rollout, rewards: torch.Tensor, global_rewards: torch.Tensor,
               all_labels: torch.Tensor, all_indices: torch.Tensor):
    """This rank's ``(advantages [b*G] (value head: [b*G, T]), returns [b*G, T] or None, valid [b*G], stats)``.

    The algorithm's advantages are computed over the global batch (``global_rewards [B*G]``, keyed by class or
    image), the same on every rank, and this rank keeps its slice. A row with a NaN or inf reward, or that the algorithm
    leaves out, is not valid: it is masked out of ``rollout.mask`` (and counted). With a value head, GAE from the
    critic replaces the advantages. With ``algorithm.kl_penalty=reward`` the rewards are first lessened by beta x
    each sample's log-ratio to the prior (``objective/kl``: its mean); under GAE each token's share is paid at its
    own position.
    """
    G, rank = run.algorithm.num_generations, distributed.rank()
    kl_stats, token_penalty = {}, None
    if kl_in_reward(run):  # each reward less beta x its sample's log-ratio to the prior
        teacher_forced = recomputes_old_logprobs(run.algorithm.old_logprobs, run.hw.precision)  # as the update's
        log_ratio = reward_kl(run.ref_policy, rollout, run.sampling, run.hw.autocast, run.algorithm.minibatch_size,
                              run.policy if teacher_forced else None)  # [b*G, T]
        kl = log_ratio.sum(1)  # [b*G]
        if run.critic is None:
            rewards = rewards - run.algorithm.beta * kl
        else:  # GAE: -beta x each token's log-ratio at its own position (TRL's PPO), the reward at the last
            token_penalty = -run.algorithm.beta * log_ratio
            rewards = rewards.masked_fill(~kl.isfinite(), float("nan"))  # a log-ratio not finite: no sample
        global_kl = distributed.gather_rows(kl)  # [B*G]
        global_rewards = global_rewards - run.algorithm.beta * global_kl
        kl_stats = {"objective/kl": float(global_kl[global_rewards.isfinite()].mean())}
    conditions = all_labels if run.algorithm.stats_key == "class" else all_indices  # [B]
    adv, keep, stats = run.algorithm.advantages(global_rewards, conditions.to(run.device).repeat_interleave(G))
    mine = slice(rank * len(rewards), (rank + 1) * len(rewards))
    adv, keep = adv[mine], keep[mine]
    valid = rewards.isfinite() & keep
    rollout.mask = rollout.mask & valid[:, None]
    returns = None
    if run.critic is not None:
        adv, returns = value_advantages(run.policy, run.critic, run.algorithm, rollout, rewards, run.sampling,
                                        run.hw.autocast, token_penalty)
        stats.pop("adv/frac_zero_std", None)  # the groups' ties: GAE's advantages, which replace theirs, have signal
    return adv, returns, valid, {**stats, **kl_stats}


def kl_in_reward(run: Run) -> bool:
    """Whether the KL to the prior is taken from the rewards (``algorithm.kl_penalty=reward``), not put in the loss."""
    return run.ref_policy is not None and getattr(run.algorithm, "kl_penalty", "loss") == "reward"


def update(run: Run, rollout: Rollout, adv: torch.Tensor, returns: torch.Tensor | None) -> dict[str, float]:
    """The algorithm's update of the policy (and critic) on this rollout; its mean stats."""
    recompute = update_recomputes(run.algorithm, run.hw.precision)
    return policy_update(run.train_policy, run.optimizer, run.algorithm, rollout, adv, run.sampling,
                         run.cfg.train.max_grad_norm, run.generators["update"], run.hw.autocast,
                         None if kl_in_reward(run) else run.ref_policy, run.train_critic, returns, recompute)


DEVIATIONS = ("policy/ratio_max_abs_dev", "policy/sampler_logprob_dev")  # maxima: the largest over ranks


def iteration_metrics(global_rewards: torch.Tensor, components: dict[str, torch.Tensor], rank_stats: dict,
                      adv_stats: dict, timings: dict[str, float], rollout: Rollout, sampled_tokens: int, device
                      ) -> dict[str, float]:
    """The iteration's metrics: reward mean and std over the global batch's finite rewards ``[B*G]``, each reward
    component's mean, the per-rank stats (reward service, update) averaged over ranks (deviations: their largest),
    the advantages' stats, timings, throughput (``sampled_tokens`` of the rollout) and, for parallel decoders, the
    mean decoding steps."""
    finite = global_rewards.isfinite()
    components = distributed.gather_named_rows(components, len(rollout.tokens), device)  # {name: [B*G]}
    return {"reward/mean": float(global_rewards[finite].mean()) if finite.any() else float("nan"),
            "reward/std": float(global_rewards[finite].std()) if finite.sum() > 1 else 0.0,
            **{f"reward/{k}": float(v[v.isfinite()].mean()) for k, v in components.items()},
            **distributed.mean_over_ranks(rank_stats, device, maxima=DEVIATIONS, totals=SERVICE_COUNTS), **adv_stats,
            **timings,
            "perf/tokens_per_s": sampled_tokens / timings["time/rollout"],
            **({} if rollout.steps is None else {"rollout/steps": float(rollout.steps.float().mean())})}


def evaluation(run: Run) -> dict[str, float]:
    """The held-out evaluation of the policy as it is now, or of its moving average when there is one
    (``rlar.eval.evaluate``), drawing as the rollouts draw (their top-k and top-p too)."""
    with gathered(run.evaluated_policy):
        return evaluate(run.evaluated_policy, run.tokenizer, run.reward, run.data, run.cfg.eval,
                        truncated(run.sampling, run.cfg.rollout), run.device, run.hw.autocast, run.eval_model,
                        run.inception, run.text_encoder)


def evaluate_prior(run: Run) -> dict:
    """The summary of a fresh run: the prior's evaluation (``eval_*_before``, and the history's iteration 0)."""
    before = evaluation(run)
    run.logger.scalars(before, 0)
    log.info("prior: %s", evaluation_line(before, run.cfg.reward))
    return {**headline(before, "before"), "history": [{"iteration": 0, **before}]}


def evaluation_line(result: dict, reward) -> str:
    """An evaluation for the log: its eval reward (not a mix z-scored over the batch: 0 by construction) and the
    judge's eval/fd and class accuracy where measured."""
    shown = [] if zscored(reward) else ["eval/reward"]
    return ", ".join(f"{tag} {result[tag]:.5g}" for tag in (*shown, "eval/fd", "eval/class_acc") if tag in result)


def warm_up(run: Run, batches, summary: dict, done: int, stop: StopRequest, saved: bool) -> None:
    """``train.warmup_steps`` supervised steps (teacher-forced cross-entropy of the batch's codes, under
    ``hardware.precision`` and clipped to ``train.max_grad_norm`` as the update is) before RL, from step ``done`` on
    (a resumed run's); the last loss goes to the summary as ``warmup_ce``. A stop signal saves after the step; a
    failure before a step's optimizer step saves the run as the steps before it left it (``saved_if_it_fails``;
    ``saved``: a checkpoint holds it already at ``done``), so the prior's evaluation and the steps done are kept."""
    steps = run.cfg.train.warmup_steps
    with tqdm(range(done, steps), initial=done, total=steps, desc="supervised warm-up", leave=False,
              disable=not (steps and distributed.is_main())) as progress:
        for i in progress:
            held = saved and i == done  # the checkpoint resumed holds the run as this step finds it
            with saved_if_it_fails(run, summary, 0, 0 if held else None, warmed=i):
                images, all_labels, all_indices = next(batches)  # this rank's images [b, C, H, W]
                captions = run.data.captions_of(run.this_rank(all_indices))
                condition = batch_conditions(run, run.this_rank(all_labels), captions)
                codes = run.tokenizer.encode_indices(images.to(run.device))  # [b, T]
                with run.hw.autocast():  # as the update: hardware.precision, then train.max_grad_norm
                    loss = teacher_forced_ce(run.train_policy.train(), codes, condition)
                run.optimizer.zero_grad(set_to_none=True)
                loss.backward()
                clip_and_step(stepped_params(run.optimizer), run.optimizer, run.cfg.train.max_grad_norm)
            summary["warmup_ce"] = loss.item()
            run.logger.scalars({"warmup/ce": loss.item()}, i)
            stop_if_requested(run, stop, summary, 0, i + 1, f"warm-up step {i + 1} of {steps}")


def earlier_timings(out: Path) -> dict:
    """The ``timings`` of the summary a finished run wrote before (none: ``{}``)."""
    path = out / "summary.json"
    return json.loads(path.read_text()).get("timings", {}) if path.is_file() else {}


def finish(run: Run, summary: dict, time_totals: dict[str, float], start: int) -> dict:
    """Complete the summary (the last evaluation's ``eval_*_after``, mean timings, the run's facts), export the
    policy (and its average) of a sharded checkpoint, and write ``summary.json`` (rank 0)."""
    t, out = run.cfg.train, run.out
    summary.pop(UNSCORED, None)  # the checkpoint's, for a run extended later; not a result
    ran = max(1, t.iterations - start)
    # a finished run started again trains nothing: it keeps the timings of the iterations it ran before
    timings = {key: total / ran for key, total in time_totals.items()} or earlier_timings(out)
    summary.update({**headline(summary["history"][-1], "after"), "iterations": t.iterations, "timings": timings,
                    "output_dir": str(out), "tokenizer": run.tokenizer.source,
                    "tokenizer_psnr_db": run.tokenizer.metrics.get("psnr_db"),
                    "eval_classifier_accuracy": run.eval_model.classifier_accuracy if run.eval_model else None,
                    "world_size": distributed.world_size(), "strategy": run.hw.strategy})
    if run.hw.strategy == "ddp":  # replicas must still be identical: a check that gradients were synchronised
        summary["replica_max_abs_diff"] = distributed.replica_divergence(run.trainable, run.device)
    if t.checkpoint_format == "sharded":  # policy.pt last: it marks the export whole (rlar.export.run_policy_weights)
        for name in ("ema", "policy") if run.ema is not None else ("policy",):
            run.checkpointer.export_policy(out / "checkpoints" / f"{name}.pt", name)
    if distributed.is_main():
        atomic_write_text(out / "summary.json", json.dumps(summary, indent=2))
    run.logger.close()
    log.info("after RL: %s; outputs in %s", evaluation_line(summary["history"][-1], run.cfg.reward), out)
    return summary
