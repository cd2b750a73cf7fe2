"""The "before RL" policy: a GPT pretrained with teacher forcing on the tokenized train split, cached. With a text
encoder the conditions are the items' captions; a trainable encoder (the embedded one) is trained with the prior
and cached with it."""

from __future__ import annotations

import logging
from dataclasses import asdict

import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from rlar.config.schemas import from_options
from rlar.data.batches import ImageData
from rlar.policy.conditioning import Condition
from rlar.policy.exported import folder_or_file, load_carried_text_encoder, run_policy_state
from rlar.policy.gpt import GPT
from rlar.policy.schemas import GPTSchema
from rlar.policy.taming_gpt import load_taming_transformer
from rlar.runtime.build_checkpoint import BuildCheckpoint
from rlar.runtime.cache import cached_artifact, seeded, source_key
from rlar.text.conditions import captions_fingerprint, item_conditions, split_captions
from rlar.text.encoder import TextEncoder
from rlar.tokenizer.frozen import FrozenTokenizer
from rlar.tokenizer.zoo_build import read_checkpoint, strict_load

log = logging.getLogger(__name__)


def check_vocabulary(vocab_size: int, block_size: int, tokenizer: FrozenTokenizer) -> None:
    """The policy must speak the tokenizer's language: same codebook, one token per grid cell."""
    if vocab_size != tokenizer.codebook_size:
        raise ValueError(
            f"policy.vocab_size={vocab_size} does not match the tokenizer's codebook of {tokenizer.codebook_size} "
            f"codes; set policy.vocab_size={tokenizer.codebook_size} (or leave it as ${{tokenizer.codebook_size}})"
        )
    if block_size != tokenizer.num_tokens:
        raise ValueError(
            f"policy.block_size={block_size} but the tokenizer makes {tokenizer.num_tokens} tokens per image "
            f"(grid {tokenizer.grid}); set policy.block_size={tokenizer.num_tokens}"
        )


def teacher_forced_ce(policy, codes: torch.Tensor, condition: Condition | torch.Tensor | None,
                      reduction: str = "mean") -> torch.Tensor:
    """Next-token cross-entropy of ground-truth codes ``[N, T]`` under teacher forcing (``reduction``: over the
    N * T positions, as ``F.cross_entropy``'s)."""
    return F.cross_entropy(policy(codes, condition).flatten(0, 1), codes.flatten(), reduction=reduction)


@torch.no_grad()
def eval_ce(policy, codes: torch.Tensor, labels: torch.Tensor, batch_size: int, captions: list[str] | None = None,
            text_encoder: TextEncoder | None = None) -> float:
    """The teacher-forced cross-entropy of codes ``[N, T]`` (class ``labels [N]``, or with ``text_encoder`` the
    ``captions``), averaged over all N * T positions, in forward passes of at most ``batch_size`` rows: one pass
    over all of them would hold logits ``[N, T, V]`` (2000 x 256 x 16384 floats: 33 GB)."""
    total = 0.0  # summed over the positions seen so far
    for start in range(0, len(codes), batch_size):
        rows = slice(start, start + batch_size)  # codes[rows]: [n <= batch_size, T]
        condition = item_conditions(text_encoder, labels[rows], None if captions is None else captions[rows],
                                    codes.device)
        total += teacher_forced_ce(policy, codes[rows], condition, reduction="sum").item()
    return total / codes.numel() if codes.numel() else float("nan")


def trained_with(policy, text_encoder: TextEncoder | None) -> list[torch.nn.Parameter]:
    """The parameters pretraining steps: the policy's, and a trainable text encoder's."""
    extra = list(text_encoder.parameters()) if text_encoder is not None and text_encoder.trainable else []
    return [*policy.parameters(), *extra]


def pretrain_gpt(policy: GPT, codes: torch.Tensor, labels: torch.Tensor, steps: int, lr: float, batch_size: int,
                 label_dropout: float, generator: torch.Generator, progress=None, captions: list[str] | None = None,
                 text_encoder: TextEncoder | None = None, checkpoint: BuildCheckpoint | None = None) -> list[float]:
    """Teacher-forced cross-entropy on codes ``[N, T]`` with class labels ``[N]``, or with ``text_encoder`` the
    items' ``captions``; conditions are replaced by the null condition (null class, null caption) with probability
    ``label_dropout`` (so that classifier-free guidance has an unconditional model). A trainable text encoder is
    trained with the policy. Returns the loss curve. ``checkpoint`` (a cache build's) saves the state when a stop
    signal comes, and resumes from it."""
    checkpoint = checkpoint or BuildCheckpoint()
    params = trained_with(policy, text_encoder)
    opt = torch.optim.AdamW(params, lr=lr, betas=(0.9, 0.95), weight_decay=0.01)
    # one-cycle: 5% warm-up (at least 2 steps, as OneCycleLR divides by warm-up steps - 1), cosine decay;
    # it cannot schedule fewer than 3 steps, which run at a constant rate
    sched = (torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=lr, total_steps=steps, pct_start=max(0.05, 2 / steps))
             if steps >= 3 else torch.optim.lr_scheduler.ConstantLR(opt, factor=1.0))
    losses = []
    policy.train()
    state = {"policy": policy, "optimizer": opt, "schedule": sched, "generator": generator, "losses": losses}
    if text_encoder is not None:
        text_encoder.train()
        state["text_encoder"] = text_encoder
    for step in range(checkpoint.resume(state, progress), steps):
        idx = torch.randint(len(codes), (batch_size,), generator=generator)
        x, y = codes[idx], labels[idx].clone()
        drop = torch.rand(batch_size, generator=generator) < label_dropout
        y[drop] = -1
        condition = y if text_encoder is None else text_encoder.condition(
            [captions[i] for i in idx.tolist()], y).dropped(drop)
        loss = teacher_forced_ce(policy, x, condition)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        sched.step()
        losses.append(loss.item())
        if progress is not None:
            progress.update(1)
            progress.set_postfix(loss=f"{loss.item():.3f}")
        checkpoint.step_done(step + 1, steps, state)
    return losses


def load_gpt_checkpoint(policy: GPT, path: str | dict) -> GPT:
    """Load ``path`` (or its loaded dict) strictly: an rlar GPT state dict, an rlar RL checkpoint (its ``policy``),
    or a taming-transformers Net2NetTransformer checkpoint (its ``transformer.*`` keys)."""
    checkpoint = run_policy_state(path if isinstance(path, dict) else read_checkpoint(path, "policy.checkpoint"))
    state = checkpoint.get("state_dict", checkpoint)
    if any(k.startswith("transformer.") or k.endswith("attn.mask") for k in state):
        return load_taming_transformer(policy, checkpoint, policy.num_classes)
    return strict_load(policy, checkpoint, "policy.checkpoint")


def needs_cached_encoder(checkpoint: str, text_encoder: TextEncoder | None) -> bool:
    """Whether a ``policy.checkpoint`` still needs its trainable text encoder from its prior's cache entry (the
    weights it was pretrained with there): a checkpoint file does; an exported folder that carries the encoder has
    it loaded into ``text_encoder`` here instead."""
    trainable = text_encoder is not None and text_encoder.trainable
    return trainable and not load_carried_text_encoder(checkpoint, text_encoder)


def encoder_missing(checkpoint: str) -> str:
    """The error when a policy checkpoint's trainable text encoder is not in the cache: a new one, pretrained now,
    would not be the encoder the policy was trained to read."""
    return (f"policy.checkpoint={checkpoint} reads the embedded text encoder of the prior it was fine-tuned from, "
            "which is kept in that prior's cache entry, and there is none for these settings; run with the cache_dir, "
            "data, tokenizer and policy.pretrain settings of the run that made the checkpoint, or give the folder "
            "`rlar-export` wrote there (it carries the encoder)")


def cached_prior(policy, name: str, arch: dict, tokenizer: FrozenTokenizer, data: ImageData, pretrain: dict,
                 cache_dir: str | None, text_encoder: TextEncoder | None = None, missing: str | None = None):
    """Load into ``policy`` the prior cached under ``name`` for these settings; on a miss, pretrain it with teacher
    forcing on the tokenized train split first (``missing``: a miss is an error with this message instead).
    ``pretrain``: a :class:`PretrainSchema`'s fields. With a ``text_encoder`` the conditions are the data's captions;
    a trainable one is cached with the policy (the entry holds ``{"policy", "text_encoder"}``) and loaded too."""
    if pretrain["steps"] < 1:  # before the train split is encoded
        raise ValueError(f"policy.pretrain.steps must be >= 1 (teacher-forced steps of the embedded prior), got "
                         f"{pretrain['steps']}; or give policy.checkpoint=<a saved policy>")
    trainable = text_encoder is not None and text_encoder.trainable
    captions = None if text_encoder is None else {s: split_captions(data, s) for s in ("train", "eval")}

    def build(checkpoint):
        generator = torch.Generator().manual_seed(pretrain["seed"])
        codes = tokenizer.encode_indices(data.train_images)  # [N, T]
        # seeded apart from the caller's random state: a run that pretrains ends as one that loads the cache
        with seeded(pretrain["seed"]), tqdm(total=pretrain["steps"], desc=f"pretrain {name}", leave=False) as bar:
            losses = pretrain_gpt(policy, codes, data.train_labels, pretrain["steps"], pretrain["lr"],
                                  pretrain["batch_size"], pretrain["label_dropout"], generator, progress=bar,
                                  captions=None if captions is None else captions["train"], text_encoder=text_encoder,
                                  checkpoint=checkpoint)
            eval_loss = eval_ce(policy.eval(), tokenizer.encode_indices(data.eval_images), data.eval_labels,
                                pretrain["batch_size"], None if captions is None else list(captions["eval"]),
                                None if text_encoder is None else text_encoder.eval())  # ARPG draws its orders
        state = policy.state_dict()
        if trainable:
            state = {"policy": state, "text_encoder": text_encoder.state_dict()}
        return state, {"final_train_loss": sum(losses[-50:]) / len(losses[-50:]), "eval_loss": float(eval_loss)}

    spec = {"arch": arch, "pretrain": pretrain, "tokenizer": source_key(tokenizer.source, cache_dir),
            "data": data.fingerprint()}
    if text_encoder is not None:
        spec["text"] = {"encoder": text_encoder.spec(), "captions": captions_fingerprint(data)}
    state, path = cached_artifact(cache_dir, name, spec, build, missing)
    if trainable:
        text_encoder.load_state_dict(state["text_encoder"])
        state = state["policy"]
    policy.load_state_dict(state)
    if text_encoder is not None:
        text_encoder.eval().requires_grad_(False)  # frozen in RL
    log.info("prior policy: %s", path)
    return policy


def build_gpt_prior(tokenizer: FrozenTokenizer, data: ImageData, text_encoder: TextEncoder | None = None,
                    **options) -> GPT:
    """A GPT policy initialised from ``checkpoint``, or from the cached prior (pretrained here on a miss).
    ``options``: the fields of :class:`GPTSchema`. With a ``text_encoder``, conditioned on its caption features
    (its width and ``max_length`` tokens); a trainable encoder gets the weights it was pretrained with."""
    spec = from_options(GPTSchema, options)
    block_size = spec.block_size or tokenizer.num_tokens
    check_vocabulary(spec.vocab_size, block_size, tokenizer)
    arch = {"vocab_size": spec.vocab_size, "block_size": block_size, "num_classes": data.num_classes,
            "n_layer": spec.n_layer, "n_head": spec.n_head, "n_embd": spec.n_embd}
    if text_encoder is not None:
        arch.update(caption_dim=text_encoder.dim, condition_tokens=text_encoder.max_length)
    if spec.condition_mode != "prefix":  # the default stays out of the cache key
        arch["condition_mode"] = spec.condition_mode
    with seeded(spec.pretrain.seed):  # the prior's initial weights: what it pretrains to depends only on its key
        policy = GPT(**arch, dropout=spec.dropout, grad_checkpointing=spec.grad_checkpointing)
    key = {**arch, "dropout": spec.dropout} if spec.dropout else arch  # pretrained with it; 0 stays out of the key
    if spec.checkpoint:
        if needs_cached_encoder(spec.checkpoint, text_encoder):
            cached_prior(policy, "gpt_prior", key, tokenizer, data, asdict(spec.pretrain), spec.cache_dir,
                         text_encoder, missing=encoder_missing(spec.checkpoint))
        return load_gpt_checkpoint(policy, folder_or_file(spec.checkpoint, policy))
    return cached_prior(policy, "gpt_prior", key, tokenizer, data, asdict(spec.pretrain), spec.cache_dir,
                        text_encoder)
