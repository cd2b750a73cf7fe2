"""Sampling with log-probabilities, and the teacher-forced recompute that reproduces them.

Both paths score a token under the same distribution (docs/design.md, log-prob rule): guided logits
``z_u + s * (z_c - z_u)`` (only when ``cfg_scale != 1``), divided by the temperature, log-softmax in fp32.
Top-k / top-p only restrict which token is drawn; the returned log-probability is under the full
tempered distribution, so the rollout is off-policy by exactly that truncation.

A policy provides ``forward(tokens, condition) -> logits [N, T, V]`` (teacher forced) and, for KV-cached
decoding, ``new_cache(batch, device)``, ``prefill(condition, prefix, cache)`` and ``step(token, cache)``. A condition
is a :class:`rlar.policy.conditioning.Condition` (class labels or caption features), a label tensor ``[N]`` or None;
guidance pairs each row with its null condition (the null class, or the learned null caption).
"""

from __future__ import annotations

import torch

from rlar.policy.conditioning import Condition
from rlar.rollout.draws import categorical_at, step_uniforms

Conditions = Condition | torch.Tensor | None  # a Condition, class labels [N], or None (the null class)
StartTokens = torch.Tensor | tuple[torch.Tensor, Conditions]
Scale = float | torch.Tensor  # one guidance scale, or one per token position [T]


def split_start_tokens(start_tokens: StartTokens) -> tuple[torch.Tensor, Conditions]:
    """The seeds' ``start_tokens``: a prefix ``[N, k]`` or a pair ``(prefix [N, k], condition [N])``."""
    if isinstance(start_tokens, (tuple, list)):
        prefix, labels = start_tokens
    else:
        prefix, labels = start_tokens, None
    if prefix.dim() != 2:
        raise ValueError(f"start prefix must be [N, k] token ids, got shape {tuple(prefix.shape)}")
    return prefix.long(), as_conditions(labels, prefix.device)


def as_conditions(labels, device) -> Conditions:
    """``labels`` as the samplers read them: None, a ``Condition``, or class ids (a tensor or a sequence of ints) as a
    long tensor on ``device``."""
    if labels is None or isinstance(labels, Condition):
        return labels
    return torch.as_tensor(labels, dtype=torch.long, device=device)


def check_labels(policy, labels: Conditions, rows: int) -> None:
    """Refuse conditions that are not one per row of the ``rows`` sequences, and class labels outside ``-1`` (the null
    class) .. ``policy.num_classes - 1``."""
    if labels is not None and len(labels) != rows:
        raise ValueError(f"{len(labels)} conditions for {rows} sequences: give one per sequence (the G samples of "
                         "an item each repeat its label: labels.repeat_interleave(G))")
    num_classes = getattr(policy, "num_classes", None)
    if isinstance(labels, Condition) and not labels.is_text:  # a class condition: its labels
        labels = labels.labels
    if not (torch.is_tensor(labels) and labels.numel()):
        return
    low, high = int(labels.min()), int(labels.max())
    bad = low if low < -1 else high if num_classes is not None and high >= num_classes else None
    if bad is not None:
        limits = "(labels 0 and up" if num_classes is None else (
            f"the policy has num_classes={num_classes} (labels 0..{num_classes - 1}")
        raise ValueError(f"class label {bad} is out of range: {limits}; -1 for the null class)")


def with_null_class(labels: Conditions, batch: int, device) -> Condition | torch.Tensor:
    """``[2N]`` conditions for a guided batch: the conditions, then the null condition of each (the null class -1,
    or the null caption)."""
    if isinstance(labels, Condition):
        return labels.with_null()
    cond = torch.full((batch,), -1, dtype=torch.long, device=device) if labels is None else labels
    return torch.cat([cond, torch.full_like(cond, -1)])


def cfg_scales(seq_len: int, scale: float, interval=None) -> torch.Tensor:
    """Guidance scale of each token position ``[T]``: ``scale`` where ``t / T`` lies in ``[lo, hi)``, else 1."""
    scales = torch.full((seq_len,), float(scale))
    if interval is not None:
        lo, hi = interval
        where = torch.arange(seq_len) / seq_len
        scales[(where < lo) | (where >= hi)] = 1.0
    return scales


def scored_sampling(rollout, block_size: int, cfg_scale: float | None = None,
                    temperature: float | None = None) -> dict:
    """The distribution the rollouts draw from and the update scores them under (the log-prob rule): the rollout's
    ``temperature`` and its guidance scale per position over ``cfg_interval`` (:func:`cfg_scales`), with
    ``cfg_scale`` and ``temperature`` in place of its own where given."""
    scale = rollout.cfg_scale if cfg_scale is None else cfg_scale
    return {"temperature": rollout.temperature if temperature is None else temperature,
            "cfg_scale": cfg_scales(block_size, scale, rollout.cfg_interval)}


def truncation(rollout) -> dict:
    """The rollout's ``top_k`` and ``top_p``: which tokens it may draw (not the distribution it is scored under)."""
    return {"top_k": rollout.top_k, "top_p": rollout.top_p}


def truncated(sampling: dict, rollout) -> dict:
    """``sampling`` (:func:`scored_sampling`) with the rollout's :func:`truncation`: the draws of an evaluation, which
    samples as the rollouts do."""
    return {**sampling, **truncation(rollout)}


def evaluation_sampling(rollout, block_size: int, cfg_scale: float | None = None,
                        temperature: float | None = None) -> dict:
    """The sampling arguments of an evaluation outside the loop: :func:`scored_sampling` :func:`truncated`."""
    return truncated(scored_sampling(rollout, block_size, cfg_scale, temperature), rollout)


def is_guided(cfg_scale: Scale) -> bool:
    return bool((torch.as_tensor(cfg_scale) != 1).any())


def guided_logprobs(logits: torch.Tensor, cfg_scale: Scale, temperature: float, doubled: bool | None = None
                    ) -> torch.Tensor:
    """Log-probabilities fp32 of the sampling distribution.

    ``logits``: ``[N, T, V]`` or ``[N, V]``, or twice N rows (conditional half first) when guided;
    ``cfg_scale``: a float, or one scale per position ``[T]`` for ``[2N, T, V]`` logits. ``doubled`` says
    whether the rows are a guided pair (default: whenever some scale differs from 1); a scale of 1 on a pair
    still combines the halves, so that a position scores the same in every code path.
    """
    logits = logits.float()
    if is_guided(cfg_scale) if doubled is None else doubled:
        cond, uncond = logits.chunk(2)
        scale = cfg_scale[:, None].to(logits.device) if torch.is_tensor(cfg_scale) else cfg_scale
        logits = uncond + scale * (cond - uncond)
    return torch.log_softmax(logits / temperature, dim=-1)


def truncate(logp: torch.Tensor, top_k: int | None, top_p: float | None) -> torch.Tensor:
    """Mask ``logp [N, V]`` outside the top-k tokens and outside the smallest top-p nucleus with -inf."""
    if top_k:
        kth = torch.topk(logp, min(top_k, logp.shape[-1]), dim=-1).values[:, -1:]
        logp = logp.masked_fill(logp < kth, float("-inf"))
    if top_p is not None and top_p < 1.0:
        sorted_logp, order = torch.sort(logp, dim=-1, descending=True)
        probs = sorted_logp.softmax(-1)
        drop = probs.cumsum(-1) - probs > top_p  # mass before this token already exceeds top_p
        logp = logp.masked_fill(drop.scatter(-1, order, drop), float("-inf"))
    return logp


def cache_dtype(device: torch.device) -> torch.dtype | None:
    """The KV cache's dtype: autocast's (bf16) inside autocast, whose keys and values are computed in it (so the
    cache holds them exactly, in half the memory of fp32), else the weights' (None)."""
    return torch.get_autocast_dtype(device.type) if torch.is_autocast_enabled(device.type) else None


def row_chunks(n: int, micro_batch_size: int | None) -> list[slice]:
    """The rows ``0..n-1`` in chunks of ``micro_batch_size`` (None: one chunk of all rows)."""
    if micro_batch_size is not None and micro_batch_size < 1:
        raise ValueError(f"rollout.micro_batch_size must be >= 1 or null, got {micro_batch_size}")
    size = micro_batch_size or max(n, 1)
    return [slice(i, i + size) for i in range(0, n, size)]


@torch.no_grad()
def sample_codes_with_logprobs(
    policy,
    start_tokens: StartTokens,
    max_len: int,
    temperature: float = 1.0,
    top_k: int | None = None,
    top_p: float | None = None,
    cfg_scale: Scale = 1.0,
    generator: torch.Generator | None = None,
    use_cache: bool = True,
    micro_batch_size: int | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Sample ``max_len`` tokens per row (at most the policy's ``block_size``) after an optional ground-truth prefix;
    class labels (a tensor or a sequence ``[N]``, one per row) lie in 0 .. ``policy.num_classes - 1`` (-1: null).

    Returns tokens ``[N, max_len]`` (the prefix copied in) and log-probs ``[N, max_len]`` fp32, 0 on the
    prefix; a prefix of ``max_len`` tokens is returned as it is, with log-probs 0, the policy never run (nothing is
    left to sample, and a prefix of ``block_size`` tokens is longer than the policy reads). ``use_cache=False``
    recomputes the whole prefix at every step (the naive sampler, for benchmarks). ``micro_batch_size`` rows are
    decoded at a time (None: all at once); the uniforms of every draw are taken first, step by step for all rows, so
    the samples do not depend on the chunking.
    """
    if temperature <= 0:
        raise ValueError(f"temperature must be > 0, got {temperature}")
    prefix, labels = split_start_tokens(start_tokens)
    n, k = prefix.shape
    block_size = getattr(policy, "block_size", max_len)  # the most tokens the policy reads
    if not k <= max_len <= block_size:
        raise ValueError(f"max_len={max_len} must lie between the prefix's length {k} and the policy's "
                         f"block_size={block_size}")
    check_labels(policy, labels, n)
    if k == max_len:  # nothing left to sample: the prefix [N, k], log-probs 0, the policy never run
        return prefix.clone(), torch.zeros(n, k, dtype=torch.float32, device=prefix.device)
    draws = step_uniforms(n, [1] * (max_len - k), generator, prefix.device)  # [N, max_len - k]
    chunks = [sample_rows(policy, prefix[rows], None if labels is None else labels[rows], max_len, draws[rows],
                          temperature, top_k, top_p, cfg_scale, use_cache) for rows in row_chunks(n, micro_batch_size)]
    return torch.cat([c[0] for c in chunks]), torch.cat([c[1] for c in chunks])


def sample_rows(policy, prefix: torch.Tensor, labels: Conditions, max_len: int, draws: torch.Tensor,
                temperature: float, top_k: int | None, top_p: float | None, cfg_scale: Scale, use_cache: bool
                ) -> tuple[torch.Tensor, torch.Tensor]:
    """``sample_codes_with_logprobs`` of the rows of ``prefix [N, k]``, token t drawn at ``draws[:, t - k]``."""
    n, k = prefix.shape
    device = prefix.device
    guided = is_guided(cfg_scale)
    model_labels = with_null_class(labels, n, device) if guided else labels
    doubled = (lambda x: torch.cat([x, x])) if guided else (lambda x: x)

    tokens = torch.zeros(n, max_len, dtype=torch.long, device=device)
    tokens[:, :k] = prefix
    logprobs = torch.zeros(n, max_len, dtype=torch.float32, device=device)

    if use_cache:
        cache = policy.new_cache(n * (2 if guided else 1), device, cache_dtype(device))
        logits = policy.prefill(model_labels, doubled(prefix), cache)  # [N or 2N, V]
    for t in range(k, max_len):
        if not use_cache:  # forward() ignores the last input token, so tokens[:, t] is a placeholder
            logits = policy(doubled(tokens[:, : t + 1]), model_labels)[:, t]
        scale = float(cfg_scale[t]) if torch.is_tensor(cfg_scale) else cfg_scale
        logp = guided_logprobs(logits, scale, temperature, doubled=guided)  # [N, V]
        draw = categorical_at(truncate(logp, top_k, top_p).exp(), draws[:, t - k, None])  # [N, 1]
        tokens[:, t] = draw[:, 0]
        logprobs[:, t] = logp.gather(-1, draw)[:, 0]
        if use_cache and t + 1 < max_len:
            logits = policy.step(doubled(tokens[:, t]), cache)
    return tokens, logprobs


@torch.no_grad()
def sample_multiple_generations(
    policy, start_tokens: StartTokens, max_len: int, num_generations: int, **sampling
) -> tuple[torch.Tensor, torch.Tensor]:
    """G samples per row, the G of a row adjacent: tokens and log-probs ``[N*G, max_len]``."""
    prefix, labels = split_start_tokens(start_tokens)
    prefix = prefix.repeat_interleave(num_generations, dim=0)
    labels = None if labels is None else labels.repeat_interleave(num_generations)
    return sample_codes_with_logprobs(policy, (prefix, labels), max_len, **sampling)


def token_logprobs(
    policy, tokens: torch.Tensor, labels: Conditions = None, temperature: float = 1.0, cfg_scale: Scale = 1.0
) -> torch.Tensor:
    """Teacher-forced log-probabilities of every code: ``[N, T, V]`` fp32 (one forward pass)."""
    return policy_logprobs(policy, tokens, labels, temperature, cfg_scale)[0]


def policy_logprobs(policy, context: torch.Tensor, labels: Conditions = None, temperature: float = 1.0,
                    cfg_scale: Scale = 1.0, hidden: bool = False) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Teacher-forced log-probs ``[N, T, V]`` given ``context [N, T]``, and with ``hidden=True`` the policy's
    last hidden states ``[N, T, D]`` (of the conditional rows) for a value head."""
    guided = is_guided(cfg_scale)
    if guided:
        context, labels = torch.cat([context, context]), with_null_class(labels, context.shape[0], context.device)
    logits, states = policy(context, labels, hidden=True)  # [N or 2N, T, V], [N or 2N, T, D]
    logp = guided_logprobs(logits, cfg_scale, temperature)
    if not hidden:
        return logp, None
    return logp, states.chunk(2)[0] if guided else states


def compute_sequence_logprob(
    policy, tokens: torch.Tensor, labels: Conditions = None, temperature: float = 1.0, cfg_scale: Scale = 1.0
) -> torch.Tensor:
    """Per-token log-probabilities ``[N, T]`` of ``tokens`` under the sampling distribution (sum over T for
    the sequence log-probability). Differentiable."""
    labels = as_conditions(labels, tokens.device)
    check_labels(policy, labels, len(tokens))
    logp = token_logprobs(policy, tokens, labels, temperature, cfg_scale)
    return logp.gather(-1, tokens[..., None])[..., 0]
