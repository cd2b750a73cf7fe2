"""The Python API our users' design documents name (docs/api.md), on top of rlar's parts."""

from __future__ import annotations

import torch

from rlar.algorithm.advantages import group_advantages
from rlar.algorithm.losses import clipped_surrogate, reinforce_loss
from rlar.algorithm.update import clip_and_step
from rlar.policy.gpt import GPT
from rlar.policy.llamagen import LlamaGen
from rlar.rollout.sampling import compute_sequence_logprob, token_logprobs
from rlar.runtime.cache import load_checkpoint

GPT_KEYS = ("n_layer", "n_head", "n_embd", "dropout", "num_classes")
POLICY_TYPES = {"gpt": GPT, "llamagen": LlamaGen, "llammagen": LlamaGen}  # the seeds spell it both ways


def _adamw(policy: torch.nn.Module, cfg: dict) -> torch.optim.Optimizer:
    return torch.optim.AdamW(policy.parameters(), lr=cfg.get("lr", 1e-4), betas=tuple(cfg.get("betas", (0.9, 0.95))),
                             weight_decay=cfg.get("weight_decay", 0.0))


def codebook_embeddings(codebook: torch.Tensor, width: int, seed: int = 0) -> torch.Tensor:
    """Token embeddings ``[V, width]`` with the geometry of ``codebook [V, d]``: the codebook itself when
    ``d == width``, else a fixed orthonormal map to ``width`` dims (an isometry into a wider space, a random
    orthogonal projection onto a narrower one); rescaled to std 0.02 (GPT's init)."""
    codebook = codebook.detach().float().cpu()  # the map is drawn on the CPU; the embedding's copy_ moves it back
    d = codebook.shape[1]
    if d != width:
        g = torch.Generator().manual_seed(seed)
        basis, _ = torch.linalg.qr(torch.randn(max(width, d), min(width, d), generator=g))  # orthonormal columns
        codebook = codebook @ (basis.T if width > d else basis)  # [V, width]
    return codebook * (0.02 / codebook.std().clamp_min(1e-12))


def build_gpt_policy(
    gpt_cls, vocab_size: int, block_size: int, cfg: dict
) -> tuple[torch.nn.Module, torch.optim.Optimizer]:
    """Instantiate a GPT-like policy and its AdamW (``cfg``: GPT kwargs plus ``lr``, ``weight_decay``, ``betas``).

    ``use_pretrained_codebook=True`` initializes the token embeddings from the tokenizer's codebook, given as
    ``cfg["codebook"]`` (a ``[V, d]`` tensor, e.g. ``tokenizer.vq.codebook.weight``) or ``cfg["codebook_ckpt_path"]``
    (a tokenizer state dict; the entry ending in ``embedding.weight`` or ``codebook.weight`` is used).
    """
    policy = (gpt_cls or GPT)(vocab_size=vocab_size, block_size=block_size,
                              **{k: cfg[k] for k in GPT_KEYS if k in cfg})
    if cfg.get("use_pretrained_codebook"):
        codebook = cfg.get("codebook")
        if codebook is None:
            state = load_checkpoint(cfg["codebook_ckpt_path"], "codebook_ckpt_path")
            state = state.get("state_dict", state.get("model", state))
            codebook = next(v for k, v in state.items() if k.endswith(("embedding.weight", "codebook.weight")))
        if codebook.shape[0] != vocab_size:
            raise ValueError(f"the codebook has {codebook.shape[0]} codes but vocab_size={vocab_size}")
        with torch.no_grad():
            policy.tok_emb.weight.copy_(codebook_embeddings(codebook, policy.tok_emb.weight.shape[1]))
    return policy, _adamw(policy, cfg)


def build_ar_policy(vocab_size: int, block_size: int, ar_cfg: dict) -> tuple[torch.nn.Module, torch.optim.Optimizer]:
    """``ar_cfg["type"]``: ``"gpt"`` or ``"llamagen"`` (also spelled ``"llammagen"``). ``ar_cfg["cls"]`` may give
    the model class; LlamaGen's own arguments (``size``, ``dim``, ...) go in ``ar_cfg["extra"]``."""
    kind = ar_cfg.get("type", "gpt")
    if kind not in POLICY_TYPES:
        raise ValueError(f"ar_cfg['type']={kind!r} is not a policy type; choose one of {sorted(POLICY_TYPES)}")
    if kind == "gpt":
        return build_gpt_policy(ar_cfg.get("cls"), vocab_size, block_size, ar_cfg)
    keys = ("n_layer", "n_head", "num_classes", "dropout")
    policy = (ar_cfg.get("cls") or LlamaGen)(vocab_size=vocab_size, block_size=block_size,
                                             **{k: ar_cfg[k] for k in keys if k in ar_cfg}, **ar_cfg.get("extra", {}))
    return policy, _adamw(policy, ar_cfg)


def groupwise_advantages(rewards: torch.Tensor, group_size: int, eps: float = 1e-8) -> torch.Tensor:
    """``(r - group mean) / (group std + eps)`` for rewards ``[N]`` with groups of ``group_size`` adjacent."""
    return group_advantages(rewards, group_size, eps=eps)[0]


def _step(policy, optimizer, loss: torch.Tensor, max_grad_norm: float | None) -> None:
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    clip_and_step(list(policy.parameters()), optimizer, max_grad_norm)


def reinforce_update(policy, optimizer, tokens: torch.Tensor, logprobs: torch.Tensor, rewards: torch.Tensor,
                     mask: torch.Tensor | None = None, entropy_coef: float = 0.0, max_grad_norm: float | None = None,
                     labels: torch.Tensor | None = None, temperature: float = 1.0) -> float:
    """One REINFORCE step. Log-probs are recomputed with gradients (teacher forced, same class labels);
    ``logprobs`` from sampling only fix the token count and are not differentiated.
    Advantages are standardized rewards; loss ``-E[A sum_t logp_t] - entropy_coef * H``."""
    mask = torch.ones_like(tokens, dtype=torch.bool) if mask is None else mask.bool()
    if logprobs.shape != tokens.shape:
        raise ValueError(f"logprobs {tuple(logprobs.shape)} must have the tokens' shape {tuple(tokens.shape)}")
    policy.train()
    adv = group_advantages(rewards, rewards.numel())[0]
    logp_all = token_logprobs(policy, tokens, labels, temperature)  # [N, T, V]
    loss, _ = reinforce_loss(logp_all.gather(-1, tokens[..., None])[..., 0], adv, mask)
    if entropy_coef:
        loss = loss - entropy_coef * (-(logp_all.exp() * logp_all).sum(-1))[mask].mean()
    _step(policy, optimizer, loss, max_grad_norm)
    return loss.item()


def grpo_update(policy, optimizer, tokens: torch.Tensor, old_logp_seq: torch.Tensor, advantages: torch.Tensor,
                clip_range: float = 0.2, max_grad_norm: float | None = None, labels: torch.Tensor | None = None,
                temperature: float = 1.0, mask: torch.Tensor | None = None) -> float:
    """One PPO-clip step. ``old_logp_seq``: per-token ``[N, T]`` (token ratios) or per-sequence ``[N]``
    (one ratio per sequence, as the seed describes); both over the same T tokens as the recompute."""
    policy.train()
    mask = torch.ones_like(tokens, dtype=torch.bool) if mask is None else mask.bool()
    logp = compute_sequence_logprob(policy, tokens, labels, temperature)  # [N, T]
    if old_logp_seq.dim() == 1:
        logp, old, mask = (logp * mask).sum(1, keepdim=True), old_logp_seq[:, None], mask.any(1, keepdim=True)
    else:
        old = old_logp_seq
    loss, _ = clipped_surrogate(logp, old, advantages, mask, clip_range)
    _step(policy, optimizer, loss, max_grad_norm)
    return loss.item()
