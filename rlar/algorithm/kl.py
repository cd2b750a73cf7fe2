"""KL divergence to a frozen reference policy, per token."""

from __future__ import annotations

import torch

ESTIMATORS = ("k3", "exact")


def k3_kl(logp: torch.Tensor, ref_logp: torch.Tensor) -> torch.Tensor:
    """Schulman's k3 estimator of KL(pi || ref) from the sampled tokens' log-probs ``[N, T]``:
    ``exp(ref - logp) - (ref - logp) - 1`` (unbiased, non-negative)."""
    d = ref_logp - logp
    return d.exp() - d - 1


def exact_kl(logp_all: torch.Tensor, ref_logp_all: torch.Tensor) -> torch.Tensor:
    """Exact KL(pi || ref) over the whole codebook at each position: ``[N, T, V]`` log-probs -> ``[N, T]``."""
    return (logp_all.exp() * (logp_all - ref_logp_all)).sum(-1)


def token_kl(estimator: str, logp_all: torch.Tensor, ref_logp_all: torch.Tensor, tokens: torch.Tensor) -> torch.Tensor:
    """Per-token KL ``[N, T]`` by ``estimator`` (k3 on the sampled ``tokens [N, T]``, or exact)."""
    if estimator == "exact":
        return exact_kl(logp_all, ref_logp_all)
    if estimator == "k3":
        pick = tokens[..., None]
        return k3_kl(logp_all.gather(-1, pick)[..., 0], ref_logp_all.gather(-1, pick)[..., 0])
    raise ValueError(f"algorithm.kl_estimator must be one of {ESTIMATORS}, got {estimator!r}")
