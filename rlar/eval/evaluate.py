"""Evaluation: free-running samples for the held-out conditions, scored by the training reward and the embedded
evaluation model, the judge (``eval/class_acc``, ``eval/fd``, ``eval/precision``, ``eval/recall``,
``eval/density``, ``eval/coverage``, ``eval/diversity``, ``eval/memorization``), with ``eval.inception`` Inception
FID, IS, precision, recall, density and coverage of class-balanced samples (``eval/inception_*``), and for data
whose eval captions are digit captions the prompts' attribute accuracy (``eval/attr/*``)."""

from __future__ import annotations

import contextlib
import math
from collections import defaultdict

import torch

from rlar.contracts import Policy, Reward, Tokenizer
from rlar.data.captions import caption_checks
from rlar.eval.caption_accuracy import metric_name, parsed_prompts
from rlar.eval.inception_eval import InceptionEval
from rlar.eval.model.scorer import EvalModel
from rlar.reward.scoring import SERVICE_COUNTS, checked_output, chunk_meta, scoring_only
from rlar.rollout.parallel_decoding import parallel_generations
from rlar.rollout.sampling import sample_multiple_generations
from rlar.runtime import distributed
from rlar.text.conditions import item_conditions
from rlar.text.encoder import TextEncoder


def scored_prefix(reward_fn: Reward, samples: torch.Tensor, targets: torch.Tensor | None, meta: dict, scored: int,
                  device) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """``(rewards [n], {name: [n]})`` of ``samples [n, C, H, W]``, only the first ``scored`` rows scored and the rest
    (a rank's padding, :func:`rank_share`) NaN: a reward that scores a call's samples together (a z-scored mix,
    ``loo_fd``) reads no padding."""
    n = len(samples)
    if scored == n:
        return checked_output(reward_fn(samples, targets, meta), n, reward_fn, device)
    unscored = torch.full((n - scored,), float("nan"), device=device)  # [n - scored]
    if scored == 0:
        return unscored, {}
    reward, parts = checked_output(reward_fn(samples[:scored], None if targets is None else targets[:scored],
                                             chunk_meta(meta, n, 0, scored)), scored, reward_fn, device)
    return torch.cat([reward.float(), unscored]), {name: torch.cat([value.float(), unscored])
                                                   for name, value in parts.items()}


def rank_share(*columns):
    """This rank's contiguous share of the held-out items, padded to the same length on every rank (so that sharded
    models run the same collectives everywhere): each column (a tensor ``[M, ...]`` or a list of M, or None) cut
    alike, then ``real [m]`` bool."""
    rank, world = distributed.rank(), distributed.world_size()
    n = len(next(c for c in columns if c is not None))
    per_rank = -(-n // world)
    mine = min(per_rank, max(0, n - rank * per_rank))  # this rank's real items
    pad = per_rank - mine

    def share(column):
        if column is None:
            return None
        x = column[rank * per_rank:][:per_rank]
        return torch.cat([x, column[:pad]]) if torch.is_tensor(column) else list(x) + list(column[:pad])

    return (*map(share, columns), torch.arange(per_rank) < mine)


def repeated(items: list, k: int) -> list:
    """Each item ``k`` times in a row (a list's ``repeat_interleave``)."""
    return [item for item in items for _ in range(k)]


@torch.no_grad()
def evaluate(policy: Policy, tokenizer: Tokenizer, reward_fn: Reward, data, eval_cfg, sampling: dict, device,
             autocast=None, eval_model: EvalModel | None = None, inception: InceptionEval | None = None,
             text_encoder: TextEncoder | None = None) -> dict[str, float]:
    """Mean reward (``eval/reward``, and each reward component's mean, ``eval/reward/<name>``) of
    ``eval_cfg.samples_per_item`` free-running samples for each held-out image (its class condition, or with
    ``text_encoder`` its caption; no prefix); with ``eval_model``, also its ``eval/class_acc``, ``eval/fd``,
    ``eval/precision``, ``eval/recall``, ``eval/density``, ``eval/coverage``, ``eval/diversity`` and
    ``eval/memorization`` of the samples. With ``eval_cfg.guided_cfg_scale``, the same evaluation again under that
    classifier-free guidance scale, as ``eval_cfg/*``. With ``inception``, also ``eval/inception_*``
    (``rlar.eval.inception_eval``). Data with eval captions passes each item's caption to the
    reward (``meta["prompts"]``); when they are all digit captions (``rlar.data.captions``), also the fraction of
    samples that pass each check their prompt asks, ``eval/attr/thickness_acc``, ``eval/attr/slant_acc`` and, with
    ``eval_model`` (the class it sees), ``eval/attr/class_acc`` and ``eval/attr/all_acc`` (every check passed).

    A fixed seed makes the numbers a function of the policy alone, so before/after RL compare like for like; a
    reward that learns across calls scores without learning (``rlar.reward.scoring.scoring_only``). What a reward
    reports of itself (a remote reward's ``reward/remote_*``) is read once, as ``eval/remote_*``; an evaluation that its
    reward servers scored nothing of raises (``check_scored_by_service``).
    Under torchrun each rank samples its share of the items and the rewards and classifier features are gathered.
    ``autocast``: the context of the policy's passes (the tokenizer and the classifier run outside it, in fp32).
    """
    with scoring_only(reward_fn):
        result = evaluate_under(policy, tokenizer, reward_fn, data, eval_cfg, sampling, device, autocast, eval_model,
                                inception, text_encoder)
        if eval_cfg.get("guided_cfg_scale") is not None:
            guided = {**sampling, "cfg_scale": float(eval_cfg.guided_cfg_scale)}
            more = evaluate_under(policy, tokenizer, reward_fn, data, eval_cfg, guided, device, autocast, eval_model,
                                  inception, text_encoder)
            result.update({"eval_cfg/" + key.removeprefix("eval/"): value for key, value in more.items()})
        # read here, not by the next iteration
        service = distributed.mean_over_ranks(reward_fn.metrics(), device, totals=SERVICE_COUNTS)
        result.update({"eval/" + key.removeprefix("reward/"): value for key, value in service.items()})
    check_scored_by_service(result, service)
    return result


def check_scored_by_service(result: dict[str, float], service: dict[str, float]) -> None:
    """Raise where an evaluation's reward scored none of its samples (``eval/reward`` or ``eval_cfg/reward`` NaN) and
    its service says why: items no reward server scored (``*remote_failed_items``). Its numbers would be recorded as
    the evaluation's; a raised error leaves it to be made again (``rlar.loop.evaluate_into``). Both are the same on
    every rank (gathered, averaged), so every rank raises."""
    failed = sum(value for key, value in service.items() if key.endswith("remote_failed_items"))
    unscored = [key for key in ("eval/reward", "eval_cfg/reward") if key in result and math.isnan(result[key])]
    if failed and unscored:
        raise distributed.RaisedOnEveryRank(
            f"the evaluation's reward scored none of its samples ({', '.join(unscored)} NaN): no reward server scored "
            f"{failed:g} items (the warnings above name each server's error); the evaluation is not recorded")


def evaluate_under(policy: Policy, tokenizer: Tokenizer, reward_fn: Reward, data, eval_cfg, sampling: dict, device,
                   autocast=None, eval_model: EvalModel | None = None, inception: InceptionEval | None = None,
                   text_encoder: TextEncoder | None = None) -> dict[str, float]:
    """One evaluation (``evaluate``'s ``eval/*``) of samples drawn under ``sampling``."""
    autocast = autocast or contextlib.nullcontext
    was_training = policy.training
    policy.eval()
    generator = torch.Generator().manual_seed(eval_cfg.seed + distributed.rank())
    items = slice(eval_cfg.max_items or None)
    prompts = None if data.eval_captions is None else list(data.eval_captions[items])
    labels = data.eval_labels[items]  # [M]
    positions, labels, prompts, asks, real = rank_share(torch.arange(len(labels)), labels, prompts,
                                                        parsed_prompts(prompts))
    labels = labels.to(device)
    k = eval_cfg.samples_per_item
    rewards, components, features, hits, steps, checks = [], [], [], [], [], defaultdict(list)
    for lo in range(0, len(labels), eval_cfg.batch_size):
        batch = slice(lo, lo + eval_cfg.batch_size)
        y = labels[batch]
        prefix = torch.zeros(len(y), 0, dtype=torch.long, device=device)
        meta = {"labels": y.repeat_interleave(k)}
        if prompts is not None:
            meta["prompts"] = repeated(prompts[batch], k)
        # the labels, or with a text encoder the features of the eval captions, encoded outside the policy's autocast
        # as the rollouts encode theirs (under it a bf16 run read other features, and cached them as fp32 ones)
        condition = item_conditions(text_encoder, y, None if prompts is None else prompts[batch], device)
        with autocast():
            if policy.decodes_in_parallel:  # a parallel decoder (ARPG): its own schedule, fixed or learned
                tokens, _, n_steps = parallel_generations(policy, (prefix, y), policy.block_size, k,
                                                          generator=generator, **sampling)
                steps.append(n_steps.float())  # [b*k]
                meta["steps"] = n_steps
            else:
                tokens, _ = sample_multiple_generations(policy, (prefix, condition), policy.block_size, k,
                                                        generator=generator, **sampling)
        samples, asked = tokenizer.decode_code(tokens), meta["labels"]  # [b*k, C, H, W], [b*k]
        images = data.eval_images_of(positions[batch])  # [b, C, H, W] as floats, a batch at a time; None: prompts
        targets = None if images is None else images.to(device).repeat_interleave(k, 0)
        # [b*k], {name: [b*k]}: this batch's real items come first, a rank's padding last (rank_share)
        reward, parts = scored_prefix(reward_fn, samples, targets, meta, int(real[batch].sum()) * k, device)
        rewards.append(reward)
        components.append(parts)
        f = None
        if eval_model is not None:
            f, hit = eval_model.describe(samples, asked)  # [b*k, F], [b*k]
            features.append(f)
            hits.append(hit)
        if asks is not None:  # the prompts' checks; the class is the judge's reading, when there is a judge
            seen = None if f is None else eval_model.classify(f)  # [b*k]
            for name, passed in caption_checks(samples, repeated(asks[batch], k), seen).items():
                checks[name].append(passed)  # [b*k]: 1, 0, or NaN where the prompt asks nothing of it
    policy.train(was_training)
    terms = {name: torch.cat([parts[name].float() if name in parts else torch.full_like(r, float("nan"))
                              for parts, r in zip(components, rewards, strict=True)]).to(device)
             for name in dict.fromkeys(name for parts in components for name in parts)}  # [n] each, in the order
    # the reward reports them; NaN for a batch that did not report one
    real = distributed.gather_rows(real.to(device, torch.uint8).repeat_interleave(k)).bool()
    rewards = distributed.gather_rows(torch.cat(rewards))[real]
    finite = rewards[rewards.isfinite()]
    result = {"eval/reward": float(finite.mean()) if finite.numel() else float("nan"),
              "eval/reward_std": float(finite.std()) if finite.numel() > 1 else 0.0,
              "eval/nan_count": float((~rewards.isfinite()).sum())}
    for name, values in distributed.gather_named_rows(terms, len(real) // distributed.world_size(), device).items():
        result[f"eval/reward/{name}"] = float(values[real].nanmean())  # e.g. reward=vapi's pixel, perceptual terms
    if steps:  # decoding steps per sample of a parallel decoder
        result["eval/steps"] = float(distributed.gather_rows(torch.cat(steps))[real].mean())
    if eval_model is not None:
        result.update(judged(eval_model, distributed.gather_rows(torch.cat(features))[real],
                             distributed.gather_rows(torch.cat(hits).to(torch.uint8))[real].bool(),
                             distributed.gather_rows(labels.repeat_interleave(k))[real], k))
    for name, parts in checks.items():  # the fraction passed among the samples whose prompt asks it
        result[metric_name(name)] = float(distributed.gather_rows(torch.cat(parts).to(device))[real].nanmean())
    if inception is not None:
        result.update(inception(policy, tokenizer, sampling, eval_cfg.batch_size, eval_cfg.seed, device, autocast))
    return result


def judged(eval_model: EvalModel, features: torch.Tensor, hits: torch.Tensor, labels: torch.Tensor,
           per_item: int) -> dict[str, float]:
    """``eval_model.metrics`` of every rank's samples (gathered: ``features [N, F]``, ``hits [N]``, ``labels [N]``),
    computed by rank 0 alone (their CPU work grows with the samples times the held-out and train images) and sent to
    the others."""
    metrics = failure = None
    if distributed.is_main():
        try:
            metrics = eval_model.metrics(features, hits, labels, per_item=per_item)
        except Exception as e:
            if not distributed.is_distributed():
                raise
            failure = e
    # its error is sent as text (an exception object may not rebuild on another rank): every rank raises it, none
    # waits for metrics that never come
    metrics, error = distributed.broadcast_object((metrics, None if failure is None else
                                                   f"{type(failure).__name__}: {failure}"))
    if error is not None:
        raise distributed.RaisedOnEveryRank(f"the judge's metrics failed on rank 0: {error}") from failure
    return metrics


# the judge's (eval.classifier)
JUDGE_METRICS = ("fd", "class_acc", "precision", "recall", "density", "coverage", "diversity", "memorization")
ATTRIBUTE_METRICS = ("attr/class_acc", "attr/thickness_acc", "attr/slant_acc", "attr/all_acc")  # captioned eval
# what the summary keeps of an evaluation (eval_<metric>_before/_after), where measured: the reward, the judge's
# metrics, Inception FID and IS, the decoding steps of a parallel decoder, the prompts' checks
HEADLINE_METRICS = ("reward", *JUDGE_METRICS, "inception_fid", "inception_is", "steps", *ATTRIBUTE_METRICS)


def summary_key(name: str, group: str = "eval") -> str:
    """The summary's key of the metric ``<group>/<name>`` (``eval/attr/all_acc`` -> ``eval_attr_all_acc``), to which
    ``_before`` and ``_after`` are appended."""
    return f"{group}_{name.replace('/', '_')}"


def headline(result: dict[str, float], when: str) -> dict[str, float]:
    """The summary's ``eval_<metric>_<when>`` entries of an evaluation: reward, and fd, class_acc, precision, recall,
    diversity, inception_fid, inception_is, the decoding steps (parallel decoders) and the prompts' attribute
    accuracies (``eval_attr_<check>_acc_<when>``: class, thickness, slant, all) if measured (and
    ``eval_cfg_<metric>_<when>`` of the guided evaluation, if any)."""
    return {f"{summary_key(name, group)}_{when}": result[f"{group}/{name}"] for group in ("eval", "eval_cfg")
            for name in HEADLINE_METRICS if f"{group}/{name}" in result}
