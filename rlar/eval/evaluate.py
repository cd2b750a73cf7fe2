"""Evaluation: free-running samples for the held-out conditions, scored by the training reward and the embedded
evaluation model, the judge (``eval/class_acc``, ``eval/fd``, ``eval/precision``, ``eval/recall``,
``eval/diversity``), and with ``eval.inception`` Inception FID, IS, precision and recall of class-balanced samples
(``eval/inception_*``)."""

from __future__ import annotations

import contextlib
from collections import defaultdict

import torch

from rlar.contracts import Policy, Reward, Tokenizer
from rlar.eval.inception_eval import InceptionEval
from rlar.eval.model.scorer import EvalModel
from rlar.rollout.parallel_decoding import parallel_generations
from rlar.rollout.sampling import sample_multiple_generations
from rlar.runtime import distributed
from rlar.text.conditions import item_conditions
from rlar.text.encoder import TextEncoder


def rank_share(images: torch.Tensor, labels: torch.Tensor
               ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """This rank's contiguous share of the held-out items, padded to the same length on every rank (so that sharded
    models run the same collectives everywhere): ``(images [m, ...], labels [m], indices [m] into the split,
    real [m] bool)``."""
    rank, world = distributed.rank(), distributed.world_size()
    per_rank = -(-len(images) // world)
    x, y = images[rank * per_rank:][:per_rank], labels[rank * per_rank:][:per_rank]
    idx = torch.arange(len(images))[rank * per_rank:][:per_rank]
    real = torch.arange(per_rank) < len(x)
    pad = per_rank - len(x)
    return torch.cat([x, images[:pad]]), torch.cat([y, labels[:pad]]), torch.cat([idx, torch.arange(pad)]), real


@torch.no_grad()
def evaluate(policy: Policy, tokenizer: Tokenizer, reward_fn: Reward, data, eval_cfg, sampling: dict, device,
             autocast=None, eval_model: EvalModel | None = None, inception: InceptionEval | None = None,
             text_encoder: TextEncoder | None = None) -> dict[str, float]:
    """Mean reward (``eval/reward``, and each reward component's mean, ``eval/reward/<name>``) of
    ``eval_cfg.samples_per_item`` free-running samples for each held-out image (its class condition, or with
    ``text_encoder`` its caption; no prefix); with
    ``eval_model``, also its ``eval/class_acc``, ``eval/fd``, ``eval/precision``, ``eval/recall`` and ``eval/diversity``
    of the samples. With ``eval_cfg.guided_cfg_scale``, the
    same evaluation again under that classifier-free guidance scale, as ``eval_cfg/*``. With ``inception``, also
    ``eval/inception_*`` (``rlar.eval.inception_eval``).

    A fixed seed makes the numbers a function of the policy alone, so before/after RL compare like for like.
    Under torchrun each rank samples its share of the items and the rewards and classifier features are gathered.
    ``autocast``: the context of the policy's passes (the tokenizer and the classifier run outside it, in fp32).
    """
    result = evaluate_under(policy, tokenizer, reward_fn, data, eval_cfg, sampling, device, autocast, eval_model,
                            inception, text_encoder)
    if eval_cfg.get("guided_cfg_scale") is not None:
        guided = {**sampling, "cfg_scale": float(eval_cfg.guided_cfg_scale)}
        more = evaluate_under(policy, tokenizer, reward_fn, data, eval_cfg, guided, device, autocast, eval_model,
                              inception, text_encoder)
        result.update({"eval_cfg/" + key.removeprefix("eval/"): value for key, value in more.items()})
    return result


def evaluate_under(policy: Policy, tokenizer: Tokenizer, reward_fn: Reward, data, eval_cfg, sampling: dict, device,
                   autocast=None, eval_model: EvalModel | None = None, inception: InceptionEval | None = None,
                   text_encoder: TextEncoder | None = None) -> dict[str, float]:
    """One evaluation (``evaluate``'s ``eval/*``) of samples drawn under ``sampling``."""
    autocast = autocast or contextlib.nullcontext
    was_training = policy.training
    policy.eval()
    generator = torch.Generator().manual_seed(eval_cfg.seed + distributed.rank())
    images, labels, indices, real = rank_share(data.eval_images[: eval_cfg.max_items or None],
                                               data.eval_labels[: eval_cfg.max_items or None])
    images, labels = images.to(device), labels.to(device)
    k, size = eval_cfg.samples_per_item, eval_cfg.batch_size
    rewards, components, features, hits, steps = [], defaultdict(list), [], [], []
    for x, y, idx in zip(images.split(size), labels.split(size), indices.split(size), strict=True):
        prefix = torch.zeros(len(x), 0, dtype=torch.long, device=device)
        meta = {"labels": y.repeat_interleave(k)}
        with autocast():
            if policy.decodes_in_parallel:  # a parallel decoder (ARPG): its own schedule, fixed or learned
                tokens, _, n_steps = parallel_generations(policy, (prefix, y), policy.block_size, k,
                                                          generator=generator, **sampling)
                steps.append(n_steps.float())  # [b*k]
                meta["steps"] = n_steps
            else:
                condition = item_conditions(text_encoder, data, "eval", y, idx, device)  # labels, or captions
                tokens, _ = sample_multiple_generations(policy, (prefix, condition), policy.block_size, k,
                                                        generator=generator, **sampling)
        samples, asked = tokenizer.decode_code(tokens), meta["labels"]  # [b*k, C, H, W], [b*k]
        reward, parts = reward_fn(samples, x.repeat_interleave(k, 0), meta)  # [b*k], {name: [b*k]}
        rewards.append(reward)
        for name, part in parts.items():
            components[name].append(part.float())
        if eval_model is not None:
            f, hit = eval_model.describe(samples, asked)  # [b*k, F], [b*k]
            features.append(f)
            hits.append(hit)
    policy.train(was_training)
    real = distributed.gather_rows(real.to(device, torch.uint8).repeat_interleave(k)).bool()
    rewards = distributed.gather_rows(torch.cat(rewards))[real]
    finite = rewards[rewards.isfinite()]
    result = {"eval/reward": float(finite.mean()) if finite.numel() else float("nan"),
              "eval/reward_std": float(finite.std()) if finite.numel() > 1 else 0.0,
              "eval/nan_count": float((~rewards.isfinite()).sum())}
    for name, parts in components.items():  # e.g. the pixel and perceptual terms of reward=vapi, each on its own
        values = distributed.gather_rows(torch.cat(parts))[real]
        result[f"eval/reward/{name}"] = float(values.nanmean())
    if steps:  # decoding steps per sample of a parallel decoder
        result["eval/steps"] = float(distributed.gather_rows(torch.cat(steps))[real].mean())
    if eval_model is not None:
        result.update(eval_model.metrics(distributed.gather_rows(torch.cat(features))[real],
                                         distributed.gather_rows(torch.cat(hits).to(torch.uint8))[real].bool(),
                                         distributed.gather_rows(labels.repeat_interleave(k))[real]))
    if inception is not None:
        result.update(inception(policy, tokenizer, sampling, eval_cfg.batch_size, eval_cfg.seed, device, autocast))
    return result


def headline(result: dict[str, float], when: str) -> dict[str, float]:
    """The summary's ``eval_<metric>_<when>`` entries of an evaluation: reward, and fd, class_acc, precision, recall,
    diversity, inception_fid, inception_is and the decoding steps (parallel decoders) if measured (and
    ``eval_cfg_<metric>_<when>`` of the guided evaluation, if any)."""
    names = ("reward", "fd", "class_acc", "precision", "recall", "diversity", "inception_fid", "inception_is", "steps")
    return {f"{group}_{name}_{when}": result[f"{group}/{name}"] for group in ("eval", "eval_cfg") for name in names
            if f"{group}/{name}" in result}
