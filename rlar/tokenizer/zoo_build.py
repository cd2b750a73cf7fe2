"""Builders for the published tokenizers (``rlar/conf/tokenizer/{llamagen_vq16,llamagen_vq8,taming_vqgan,ibq}.yaml``)
and the seeds' IBQ API: read a released file with ``weights_only=True``, load it strictly, wrap it frozen."""

from __future__ import annotations

import os
import zipfile
from pathlib import Path

import torch
from torch import nn

from rlar.runtime.cache import load_checkpoint
from rlar.tokenizer.build import plain
from rlar.tokenizer.frozen import FrozenTokenizer
from rlar.tokenizer.ibq import IBQ, ibq_state
from rlar.tokenizer.llamagen_vq import LlamaGenVQ, llamagen_state
from rlar.tokenizer.taming_vqgan import TamingVQGAN, taming_generator_state

SHOWN = 8  # keys listed per kind of mismatch


class _Stub:
    """Stands in for a non-tensor class a training script pickled (a Lightning callback, ``argparse.Namespace``):
    it keeps what it is given and runs no code."""

    def __init__(self, *args, **kwargs):
        self.args, self.kwargs = args, kwargs

    def __setstate__(self, state):
        self.state = state


def read_checkpoint(path: str | os.PathLike, what: str) -> dict:
    """``torch.load(weights_only=True)`` of a training file. Classes it names that the safe unpickler refuses
    (PyTorch-Lightning callbacks keyed by class, argparse args) are replaced by inert stubs, never imported.
    Files in the legacy (non-zip) format are read as they are."""
    path = Path(path).expanduser()
    names = torch.serialization.get_unsafe_globals_in_checkpoint(path) if zipfile.is_zipfile(path) else []
    stubs = [(type(name.rsplit(".", 1)[-1], (_Stub,), {}), name) for name in names]
    with torch.serialization.safe_globals(stubs):
        return load_checkpoint(path, what)


def strict_load(model: nn.Module, state: dict, what: str, hint: str = "check the architecture settings"
                ) -> nn.Module:
    """``load_state_dict(strict=True)`` after a check whose error lists missing, unexpected and misshapen keys, and
    says what to check (``hint``)."""
    expected = model.state_dict()
    missing = [k for k in expected if k not in state]
    unexpected = [k for k in state if k not in expected]
    shapes = [f"{k}: file {tuple(state[k].shape)} vs model {tuple(v.shape)}" for k, v in expected.items()
              if k in state and tuple(state[k].shape) != tuple(v.shape)]
    if missing or unexpected or shapes:
        lines = [f"{what}: the checkpoint does not fit {type(model).__name__} ({len(missing)} missing, "
                 f"{len(unexpected)} unexpected, {len(shapes)} of another shape); {hint}"]
        for label, keys in (("missing", missing), ("unexpected", unexpected), ("shape", shapes)):
            if keys:
                more = f" ... (+{len(keys) - SHOWN} more)" if len(keys) > SHOWN else ""
                lines.append(f"  {label}: " + ", ".join(keys[:SHOWN]) + more)
        raise ValueError("\n".join(lines))
    model.load_state_dict(state, strict=True)
    return model


def _frozen(model: nn.Module, source: str, chunk_size: int) -> FrozenTokenizer:
    """``model`` frozen, named by ``source`` (its checkpoint, and a note where a setting changes its codes); no
    reconstruction quality is measured for a released tokenizer."""
    return FrozenTokenizer(model, chunk_size=chunk_size, source=str(source))


def build_llamagen_vq(data=None, *, checkpoint: str, image_size: int = 256, codebook_size: int = 16384,
                      codebook_embed_dim: int = 8, codebook_l2_norm: bool = True, ch: int = 128,
                      ch_mult: list[int] = (1, 1, 2, 2, 4), num_res_blocks: int = 2, z_channels: int = 256,
                      chunk_size: int = 32) -> FrozenTokenizer:
    """LlamaGen VQ-16 / VQ-8 from a released file (``["model"]``), frozen. ``data`` is accepted and ignored."""
    model = LlamaGenVQ(image_size, codebook_size, codebook_embed_dim, codebook_l2_norm, ch, list(ch_mult),
                       num_res_blocks, z_channels)
    strict_load(model, llamagen_state(read_checkpoint(checkpoint, "tokenizer.checkpoint")), "tokenizer.checkpoint")
    # the source names the codebook's norm, which changes every code and not the file: a prior cached for one is
    # not reused for the other
    return _frozen(model, checkpoint if codebook_l2_norm else f"{checkpoint} (codebook not l2-normed)", chunk_size)


def build_taming_vqgan(data=None, *, checkpoint: str, ddconfig: dict, image_size: int = 256,
                       codebook_size: int = 16384, embed_dim: int = 256, chunk_size: int = 32) -> FrozenTokenizer:
    """taming VQGAN from a VQGAN or Net2NetTransformer file (``["state_dict"]``), frozen. ``data`` is ignored."""
    model = TamingVQGAN(plain(ddconfig), codebook_size, embed_dim, image_size)
    state = taming_generator_state(read_checkpoint(checkpoint, "tokenizer.checkpoint"))
    strict_load(model, state, "tokenizer.checkpoint")
    return _frozen(model, checkpoint, chunk_size)


IBQ_WEIGHTS = ("raw", "ema")


def build_ibq(data=None, *, checkpoint: str, ddconfig: dict, image_size: int = 256, codebook_size: int = 262144,
              embed_dim: int = 256, use_ema: bool = True, weights: str = "raw",
              chunk_size: int = 32) -> FrozenTokenizer:
    """IBQ from a released file (``["state_dict"]``), frozen, with its raw weights or (``weights="ema"``) the EMA
    copies the file also holds. ``data`` is accepted and ignored."""
    if weights not in IBQ_WEIGHTS:
        raise ValueError(f"tokenizer.weights must be one of {IBQ_WEIGHTS}, got {weights!r}")
    model = IBQ(plain(ddconfig), codebook_size, embed_dim, use_ema=use_ema, image_size=image_size)
    state = ibq_state(read_checkpoint(checkpoint, "tokenizer.checkpoint"))
    has_ema = any(k.startswith("model_ema.") for k in state)
    if weights == "ema" and not has_ema:
        raise ValueError(f"tokenizer.weights=ema but {checkpoint} holds no EMA weights (no model_ema.* keys); "
                         f"use tokenizer.weights=raw (and tokenizer.use_ema=false for a file without them)")
    if weights == "ema" and not use_ema:
        raise ValueError("tokenizer.weights=ema needs tokenizer.use_ema=true (the EMA copies are read with the model)")
    if use_ema and not has_ema:
        raise ValueError(f"{checkpoint} holds no EMA weights (no model_ema.* keys), and tokenizer.use_ema=true reads "
                         "them with the model: set tokenizer.use_ema=false")
    strict_load(model, state, "tokenizer.checkpoint")
    if weights == "ema":
        model.use_ema_weights()
    # the source names the weights: a prior cached for the raw tokenizer's codes is not one for the EMA one's
    source = str(checkpoint) if weights == "raw" else f"{checkpoint} (EMA weights)"
    return FrozenTokenizer(model.eval(), chunk_size=chunk_size, source=source)


# -- the seeds' API ----------------------------------------------------------------------------------------
def build_toklip_vq_model(init_args: dict, ckpt_path: str | None = None, device=None) -> IBQ:
    """``IBQ(**init_args)`` (keys ``ddconfig``, ``lossconfig``, ``n_embed``, ``embed_dim``, ``l2_normalize``,
    ``use_ema``, ``stage``; optional ``image_size``), loaded strictly from ``ckpt_path`` when given, in eval mode."""
    model = IBQ(**plain(init_args))
    if ckpt_path:
        strict_load(model, ibq_state(read_checkpoint(ckpt_path, "ckpt_path")), "ckpt_path")
    return model.to(device).eval() if device is not None else model.eval()


def build_toklip_tokenizer(init_args: dict, ckpt_path: str | None = None, device=None) -> FrozenTokenizer:
    """``build_toklip_vq_model`` wrapped frozen; the model is ``.vq``."""
    return FrozenTokenizer(build_toklip_vq_model(init_args, ckpt_path, device))
