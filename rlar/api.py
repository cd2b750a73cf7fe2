"""The Python API our users' design documents name (docs/api.md), on top of rlar's parts."""

from __future__ import annotations

import torch

from rlar.algorithm.advantages import group_advantages
from rlar.algorithm.losses import clipped_surrogate, reinforce_loss
from rlar.algorithm.update import clip_and_step
from rlar.config.schemas import OptimizerSchema
from rlar.policy.gpt import GPT
from rlar.policy.llamagen import LlamaGen
from rlar.policy.schemas import GPTSchema
from rlar.rollout.sampling import Scale, as_conditions, check_labels, compute_sequence_logprob, token_logprobs
from rlar.runtime.cache import load_checkpoint
from rlar.tokenizer.digits_vq import DigitsVQ
from rlar.tokenizer.llamagen_vq import LlamaGenVQ
from rlar.tokenizer.taming_vqgan import TamingVQGAN

MODEL_KEYS = ("n_layer", "n_head", "n_embd", "dropout", "num_classes")  # GPT's; n_embd is LlamaGen's dim
OPTIMIZER_KEYS = ("lr", "betas", "weight_decay")
CODEBOOK_KEYS = ("use_pretrained_codebook", "codebook", "codebook_ckpt_path")
POLICY_TYPES = {"gpt": GPT, "llamagen": LlamaGen, "llammagen": LlamaGen}  # the seeds spell it both ways


def _check_keys(cfg: dict, accepted: tuple[str, ...], where: str) -> None:
    """Refuse the keys of ``cfg`` outside ``accepted``, naming them and the accepted ones."""
    unknown = sorted(set(cfg) - set(accepted), key=str)
    if unknown:
        raise ValueError(f"{where}: unknown key(s) {unknown}; accepted: {', '.join(accepted)} (other arguments of the "
                         "model class go in extra={...})")


def _model_kwargs(cfg: dict, keys: tuple[str, ...], rename: dict[str, str] | None = None) -> dict:
    """The model class's keyword arguments: ``cfg``'s ``keys`` (renamed by ``rename``) and ``cfg["extra"]``."""
    rename = rename or {}
    kwargs = {rename.get(k, k): cfg[k] for k in keys if k in cfg}
    extra = dict(cfg.get("extra", {}))
    both = sorted(kwargs.keys() & extra.keys())
    if both:
        raise ValueError(f"{both} given twice, as a key (n_embd: LlamaGen's dim) and in extra; give each once")
    return {**kwargs, **extra}


def _adamw(policy: torch.nn.Module, cfg: dict) -> torch.optim.Optimizer:
    """AdamW over ``policy``; ``lr``, ``betas`` and ``weight_decay`` not in ``cfg`` are the Hydra config's."""
    default = OptimizerSchema()
    return torch.optim.AdamW(policy.parameters(), lr=cfg.get("lr", default.lr),
                             betas=tuple(cfg.get("betas", default.betas)),
                             weight_decay=cfg.get("weight_decay", default.weight_decay))


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


def tokenizer_codebook(tokenizer: torch.nn.Module) -> torch.Tensor:
    """The code vectors ``[V, d]`` of a tokenizer rlar builds (a ``FrozenTokenizer`` or the VQ model it wraps): the
    rows its decoder reads (LlamaGen-VQ's l2-normalized ones when it normalizes)."""
    vq = getattr(tokenizer, "vq", tokenizer)
    if isinstance(vq, LlamaGenVQ):
        return vq.quantize.codebook()
    if isinstance(vq, TamingVQGAN):  # taming VQGAN and IBQ (TokLIP)
        return vq.quantize.embedding.weight
    if isinstance(vq, DigitsVQ):
        return vq.codebook.weight
    raise TypeError(f"no codebook known for a {type(vq).__name__} (LlamaGenVQ, TamingVQGAN, IBQ or DigitsVQ, or a "
                    "FrozenTokenizer of one); pass its [V, d] code vectors as cfg['codebook']")


def stored_codebook(path: str | None) -> torch.Tensor:
    """The code vectors ``[V, d]`` of the tokenizer state dict at ``path``: its entry ending in ``embedding.weight``
    or ``codebook.weight`` (under ``state_dict`` or ``model`` where the file nests it)."""
    if path is None:
        raise ValueError("use_pretrained_codebook=True needs the codebook: cfg['codebook'] (the tokenizer, or its "
                         "[V, d] code vectors) or cfg['codebook_ckpt_path'] (a tokenizer state dict)")
    state = load_checkpoint(path, "codebook_ckpt_path")
    state = state.get("state_dict", state.get("model", state))
    found = [v for k, v in state.items() if k.endswith(("embedding.weight", "codebook.weight"))]
    if not found:
        raise ValueError(f"codebook_ckpt_path={path} holds no entry ending in embedding.weight or codebook.weight "
                         f"(its keys: {sorted(state)[:8]}{' ...' if len(state) > 8 else ''}); pass the code vectors "
                         "as cfg['codebook']")
    return found[0]


def build_gpt_policy(
    gpt_cls, vocab_size: int, block_size: int, cfg: dict
) -> tuple[torch.nn.Module, torch.optim.Optimizer]:
    """Instantiate a GPT-like policy and its AdamW. ``cfg``: the GPT keys ``n_layer``, ``n_head``, ``n_embd``,
    ``dropout``, ``num_classes``; ``extra`` (more keyword arguments of the class); ``lr``, ``weight_decay``,
    ``betas``; the codebook keys below. Any other key is refused.

    ``use_pretrained_codebook=True`` initializes the token embeddings from the tokenizer's codebook, given as
    ``cfg["codebook"]`` (the tokenizer itself, read by :func:`tokenizer_codebook`, or a ``[V, d]`` tensor) or
    ``cfg["codebook_ckpt_path"]`` (a tokenizer state dict; the entry ending in ``embedding.weight`` or
    ``codebook.weight`` is used, its rows as stored: a LlamaGen VQ l2-normalizes its rows before decoding, which the
    tokenizer given as ``cfg["codebook"]`` does too).
    """
    _check_keys(cfg, (*MODEL_KEYS, "extra", *OPTIMIZER_KEYS, *CODEBOOK_KEYS), "build_gpt_policy cfg")
    if gpt_cls in (None, GPT):  # rlar's GPT: the sizes not given are the Hydra config's (policy=gpt)
        given = cfg.keys() | dict(cfg.get("extra", {})).keys()
        cfg = {**{k: getattr(GPTSchema, k) for k in ("n_layer", "n_head", "n_embd") if k not in given}, **cfg}
    policy = (gpt_cls or GPT)(vocab_size=vocab_size, block_size=block_size, **_model_kwargs(cfg, MODEL_KEYS))
    if cfg.get("use_pretrained_codebook"):
        codebook = cfg.get("codebook")
        if isinstance(codebook, torch.nn.Module):
            codebook = tokenizer_codebook(codebook)  # [V, d]
        if codebook is None:
            codebook = stored_codebook(cfg.get("codebook_ckpt_path"))
        if codebook.shape[0] != vocab_size:
            raise ValueError(f"the codebook has {codebook.shape[0]} codes but vocab_size={vocab_size}")
        with torch.no_grad():
            policy.tok_emb.weight.copy_(codebook_embeddings(codebook, policy.tok_emb.weight.shape[1]))
    return policy, _adamw(policy, cfg)


def build_ar_policy(vocab_size: int, block_size: int, ar_cfg: dict) -> tuple[torch.nn.Module, torch.optim.Optimizer]:
    """``ar_cfg["type"]``: ``"gpt"`` (the keys of :func:`build_gpt_policy`) or ``"llamagen"`` (also spelled
    ``"llammagen"``: ``n_layer``, ``n_head``, ``n_embd`` (LlamaGen's ``dim``), ``dropout``, ``num_classes``, ``lr``,
    ``weight_decay``, ``betas``). ``ar_cfg["cls"]`` may give the model class; more of its arguments (LlamaGen's
    ``size``, ...) go in ``ar_cfg["extra"]``. Any other key is refused."""
    kind = ar_cfg.get("type", "gpt")
    if kind not in POLICY_TYPES:
        raise ValueError(f"ar_cfg['type']={kind!r} is not a policy type; choose one of {sorted(POLICY_TYPES)}")
    own = (MODEL_KEYS + CODEBOOK_KEYS) if kind == "gpt" else MODEL_KEYS
    _check_keys(ar_cfg, ("type", "cls", *own, "extra", *OPTIMIZER_KEYS), f"ar_cfg of type {kind!r}")
    cfg = {k: v for k, v in ar_cfg.items() if k not in ("type", "cls")}
    if kind == "gpt":
        return build_gpt_policy(ar_cfg.get("cls"), vocab_size, block_size, cfg)
    policy = (ar_cfg.get("cls") or LlamaGen)(vocab_size=vocab_size, block_size=block_size,
                                             **_model_kwargs(cfg, MODEL_KEYS, {"n_embd": "dim"}))
    return policy, _adamw(policy, cfg)


def groupwise_advantages(rewards: torch.Tensor, group_size: int, eps: float = 1e-8) -> torch.Tensor:
    """``(r - group mean) / (group std + eps)`` for rewards ``[N]`` with groups of ``group_size`` adjacent."""
    return group_advantages(rewards, group_size, eps=eps)[0]


def _step(policy, optimizer, loss: torch.Tensor, max_grad_norm: float | None) -> None:
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    clip_and_step(list(policy.parameters()), optimizer, max_grad_norm)


def _update_mask(tokens: torch.Tensor, mask: torch.Tensor | None, prefix_len: int | None,
                 sampled_logp: torch.Tensor | None) -> torch.Tensor:
    """The sampled tokens an update trains on ``[N, T]`` bool: ``mask`` (default: all) without the first
    ``prefix_len`` positions, the prefix the sampler copied in. ``prefix_len=None`` reads it from the sampler's
    per-token log-probs ``sampled_logp [N, T]``, 0 on the prefix (the leading positions that are 0 in every row);
    without them it is 0."""
    t = tokens.shape[1]
    mask = torch.ones_like(tokens, dtype=torch.bool) if mask is None else mask.bool()
    if prefix_len is None and sampled_logp is not None:
        sampled = (sampled_logp != 0).any(0)  # [T]: a position some row sampled
        if not sampled.any():
            raise ValueError("the sampled log-probs are 0 at every position, as on a prefix: nothing was sampled; "
                             "pass prefix_len (the k of start_tokens' prefix [N, k])")
        prefix_len = int(sampled.int().argmax())  # the first sampled position
    prefix_len = prefix_len or 0
    if not 0 <= prefix_len < t:
        raise ValueError(f"prefix_len={prefix_len} must lie in [0, {t}) for sequences of {t} tokens")
    return mask & (torch.arange(t, device=mask.device) >= prefix_len)


def reinforce_update(policy, optimizer, tokens: torch.Tensor, logprobs: torch.Tensor, rewards: torch.Tensor,
                     mask: torch.Tensor | None = None, entropy_coef: float = 0.0, max_grad_norm: float | None = None,
                     labels: torch.Tensor | None = None, temperature: float = 1.0, cfg_scale: Scale = 1.0,
                     prefix_len: int | None = None) -> float:
    """One REINFORCE step on the sampled tokens. Log-probs are recomputed with gradients (teacher forced, same
    class labels, temperature and guidance scale as the sampler); ``logprobs [N, T]`` from sampling only say which
    positions were sampled (see ``prefix_len``) and are not differentiated. The ``prefix_len`` leading tokens (the
    start prefix; None: the leading positions whose sampled log-prob is 0 in every row) and the tokens outside
    ``mask [N, T]`` are left out. Advantages are standardized rewards ``[N]``; loss ``-E[A sum_t logp_t] -
    entropy_coef * H``."""
    if logprobs.shape != tokens.shape:
        raise ValueError(f"logprobs {tuple(logprobs.shape)} must have the tokens' shape {tuple(tokens.shape)}")
    labels = as_conditions(labels, tokens.device)  # a sequence of ints too, as the sampler takes
    check_labels(policy, labels, len(tokens))
    mask = _update_mask(tokens, mask, prefix_len, logprobs)  # [N, T]
    policy.train()
    adv = group_advantages(rewards, rewards.numel())[0]
    logp_all = token_logprobs(policy, tokens, labels, temperature, cfg_scale)  # [N, T, V]
    loss, _ = reinforce_loss(logp_all.gather(-1, tokens[..., None])[..., 0], adv, mask)
    if entropy_coef:
        loss = loss - entropy_coef * (-(logp_all.exp() * logp_all).sum(-1))[mask].mean()
    _step(policy, optimizer, loss, max_grad_norm)
    return loss.item()


def grpo_update(policy, optimizer, tokens: torch.Tensor, old_logp_seq: torch.Tensor, advantages: torch.Tensor,
                clip_range: float = 0.2, max_grad_norm: float | None = None, labels: torch.Tensor | None = None,
                temperature: float = 1.0, mask: torch.Tensor | None = None, cfg_scale: Scale = 1.0,
                prefix_len: int | None = None) -> float:
    """One PPO-clip step on the sampled tokens, recomputed under the sampler's labels, temperature and guidance
    scale. ``old_logp_seq``: per-token ``[N, T]`` (token ratios) or per-sequence ``[N]`` (one ratio per sequence,
    as the seed describes: the sum over the sampled tokens). The ``prefix_len`` leading tokens (the start prefix)
    and the tokens outside ``mask [N, T]`` are left out; ``prefix_len=None`` reads the prefix from per-token
    log-probs (the leading positions that are 0 in every row) and means 0 with per-sequence ones."""
    per_token = old_logp_seq.dim() == 2
    if per_token and old_logp_seq.shape != tokens.shape:
        raise ValueError(f"old_logp_seq {tuple(old_logp_seq.shape)} must be [N] or the tokens' shape "
                         f"{tuple(tokens.shape)}")
    mask = _update_mask(tokens, mask, prefix_len, old_logp_seq if per_token else None)  # [N, T]
    policy.train()
    logp = compute_sequence_logprob(policy, tokens, labels, temperature, cfg_scale)  # [N, T]
    old = old_logp_seq
    if not per_token:  # one ratio per sequence: [N, 1]
        logp, old, mask = (logp * mask).sum(1, keepdim=True), old_logp_seq[:, None], mask.any(1, keepdim=True)
    loss, _ = clipped_surrogate(logp, old, advantages, mask, clip_range)
    _step(policy, optimizer, loss, max_grad_norm)
    return loss.item()
