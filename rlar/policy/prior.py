"""The "before RL" policy: a GPT pretrained with teacher forcing on the tokenized train split, cached."""

from __future__ import annotations

import logging
from dataclasses import asdict

import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from rlar.config.schemas import from_options
from rlar.data.batches import ImageData
from rlar.policy.exported import folder_or_file
from rlar.policy.gpt import GPT
from rlar.policy.schemas import GPTSchema
from rlar.policy.taming_gpt import load_taming_transformer
from rlar.runtime.cache import cached_artifact
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


def teacher_forced_ce(policy, codes: torch.Tensor, labels: torch.Tensor | None) -> torch.Tensor:
    """Next-token cross-entropy of ground-truth codes ``[N, T]`` under teacher forcing."""
    return F.cross_entropy(policy(codes, labels).flatten(0, 1), codes.flatten())


def pretrain_gpt(policy: GPT, codes: torch.Tensor, labels: torch.Tensor, steps: int, lr: float, batch_size: int,
                 label_dropout: float, generator: torch.Generator, progress=None) -> list[float]:
    """Teacher-forced cross-entropy on codes ``[N, T]`` with class labels ``[N]``; labels are replaced by the
    null class with probability ``label_dropout`` (so that classifier-free guidance has an unconditional model).
    Returns the loss curve."""
    opt = torch.optim.AdamW(policy.parameters(), lr=lr, betas=(0.9, 0.95), weight_decay=0.01)
    # one-cycle: 5% warm-up (at least 2 steps, as OneCycleLR divides by warm-up steps - 1), cosine decay;
    # it cannot schedule fewer than 3 steps, which run at a constant rate
    sched = (torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=lr, total_steps=steps, pct_start=max(0.05, 2 / steps))
             if steps >= 3 else torch.optim.lr_scheduler.ConstantLR(opt, factor=1.0))
    losses = []
    policy.train()
    for _ in range(steps):
        idx = torch.randint(len(codes), (batch_size,), generator=generator)
        x, y = codes[idx], labels[idx].clone()
        y[torch.rand(batch_size, generator=generator) < label_dropout] = -1
        loss = teacher_forced_ce(policy, x, y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(policy.parameters(), 1.0)
        opt.step()
        sched.step()
        losses.append(loss.item())
        if progress is not None:
            progress.update(1)
            progress.set_postfix(loss=f"{loss.item():.3f}")
    return losses


def load_gpt_checkpoint(policy: GPT, path: str | dict) -> GPT:
    """Load ``path`` (or its loaded dict) strictly: an rlar GPT state dict, an rlar RL checkpoint (its ``policy``),
    or a taming-transformers Net2NetTransformer checkpoint (its ``transformer.*`` keys)."""
    checkpoint = path if isinstance(path, dict) else read_checkpoint(path, "policy.checkpoint")
    state = checkpoint.get("state_dict", checkpoint)
    if any(k.startswith("transformer.") or k.endswith("attn.mask") for k in state):
        return load_taming_transformer(policy, checkpoint, policy.num_classes)
    return strict_load(policy, checkpoint.get("policy", checkpoint), "policy.checkpoint")


def cached_prior(policy, name: str, arch: dict, tokenizer: FrozenTokenizer, data: ImageData, pretrain: dict,
                 cache_dir: str | None):
    """Load into ``policy`` the prior cached under ``name`` for these settings; on a miss, pretrain it with teacher
    forcing on the tokenized train split first. ``pretrain``: a :class:`PretrainSchema`'s fields."""

    def build():
        generator = torch.Generator().manual_seed(pretrain["seed"])
        codes = tokenizer.encode_indices(data.train_images)  # [N, T]
        # seeded apart from the caller's random state: a run that pretrains ends as one that loads the cache
        with torch.random.fork_rng(devices=[]), tqdm(total=pretrain["steps"], desc=f"pretrain {name}",
                                                     leave=False) as bar:
            torch.manual_seed(pretrain["seed"])
            losses = pretrain_gpt(policy, codes, data.train_labels, pretrain["steps"], pretrain["lr"],
                                  pretrain["batch_size"], pretrain["label_dropout"], generator, progress=bar)
        with torch.no_grad():
            eval_loss = teacher_forced_ce(policy.eval(), tokenizer.encode_indices(data.eval_images), data.eval_labels)
        return policy.state_dict(), {"final_train_loss": sum(losses[-50:]) / len(losses[-50:]),
                                     "eval_loss": float(eval_loss)}

    spec = {"arch": arch, "pretrain": pretrain, "tokenizer": tokenizer.source, "data": data.fingerprint()}
    state, path = cached_artifact(cache_dir, name, spec, build)
    policy.load_state_dict(state)
    log.info("prior policy: %s", path)
    return policy


def build_gpt_prior(tokenizer: FrozenTokenizer, data: ImageData, **options) -> GPT:
    """A GPT policy initialised from ``checkpoint``, or from the cached prior (pretrained here on a miss).
    ``options``: the fields of :class:`GPTSchema`."""
    spec = from_options(GPTSchema, options)
    block_size = spec.block_size or tokenizer.num_tokens
    check_vocabulary(spec.vocab_size, block_size, tokenizer)
    arch = {"vocab_size": spec.vocab_size, "block_size": block_size, "num_classes": data.num_classes,
            "n_layer": spec.n_layer, "n_head": spec.n_head, "n_embd": spec.n_embd}
    policy = GPT(**arch, dropout=spec.dropout, grad_checkpointing=spec.grad_checkpointing)
    if spec.checkpoint:
        return load_gpt_checkpoint(policy, folder_or_file(spec.checkpoint, policy))
    return cached_prior(policy, "gpt_prior", arch, tokenizer, data, asdict(spec.pretrain), spec.cache_dir)
