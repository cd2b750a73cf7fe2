"""The LlamaGen "before RL" policy: a released checkpoint, or a small one pretrained on the tokenized train split."""

from __future__ import annotations

import logging

import torch
from tqdm.auto import tqdm

from rlar.cache import cached_artifact
from rlar.data.batches import ImageData
from rlar.policy.llamagen import LlamaGen, load_llamagen_state
from rlar.policy.prior import check_vocabulary, pretrain_gpt, teacher_forced_ce
from rlar.tokenizer.build import plain
from rlar.tokenizer.frozen import FrozenTokenizer

log = logging.getLogger(__name__)


def build_llamagen_prior(tokenizer: FrozenTokenizer, data: ImageData, vocab_size: int, block_size: int | None = None,
                         size: str | None = None, n_layer: int = 2, n_head: int = 4, dim: int = 96,
                         multiple_of: int = 256, ffn_dim_multiplier: float | None = None, rope_base: float = 10000.0,
                         norm_eps: float = 1e-5, cls_token_num: int = 1, dropout: float = 0.0,
                         checkpoint: str | None = None, pretrain: dict | None = None,
                         cache_dir: str | None = None) -> LlamaGen:
    """A LlamaGen policy loaded strictly from ``checkpoint``, or from the cached prior (pretrained on a miss)."""
    block_size = block_size or tokenizer.num_tokens
    check_vocabulary(vocab_size, block_size, tokenizer)
    pretrain = {"steps": 1200, "lr": 1e-3, "batch_size": 64, "label_dropout": 0.1, "seed": 0, **plain(pretrain)}
    arch = {"vocab_size": vocab_size, "block_size": block_size, "num_classes": data.num_classes, "size": size,
            "n_layer": n_layer, "n_head": n_head, "dim": dim, "multiple_of": multiple_of,
            "ffn_dim_multiplier": ffn_dim_multiplier, "rope_base": rope_base, "norm_eps": norm_eps,
            "cls_token_num": cls_token_num, "dropout": dropout}
    policy = LlamaGen(**arch)
    if checkpoint:
        return load_llamagen_state(policy, checkpoint)

    def build():
        generator = torch.Generator().manual_seed(pretrain["seed"])
        torch.manual_seed(pretrain["seed"])
        codes = tokenizer.encode_indices(data.train_images)  # [N, T]
        with tqdm(total=pretrain["steps"], desc="pretrain LlamaGen prior", leave=False) as bar:
            losses = pretrain_gpt(policy, codes, data.train_labels, pretrain["steps"], pretrain["lr"],
                                  pretrain["batch_size"], pretrain["label_dropout"], generator, progress=bar)
        with torch.no_grad():
            eval_loss = teacher_forced_ce(policy.eval(), tokenizer.encode_indices(data.eval_images), data.eval_labels)
        return policy.state_dict(), {"final_train_loss": sum(losses[-50:]) / len(losses[-50:]),
                                     "eval_loss": float(eval_loss)}

    resolved = {"n_layer": policy.n_layer, "n_head": policy.n_head, "dim": policy.n_embd}  # after the preset
    spec = {"arch": {**arch, **resolved}, "pretrain": pretrain, "tokenizer": tokenizer.source,
            "data": data.fingerprint()}
    state, path = cached_artifact(cache_dir, "llamagen_prior", spec, build)
    policy.load_state_dict(state)
    log.info("prior policy: %s", path)
    return policy
