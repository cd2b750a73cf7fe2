"""Build the embedded tokenizer: load a checkpoint, or train it on the data once and cache it."""

from __future__ import annotations

import logging

import torch
from omegaconf import DictConfig, OmegaConf
from tqdm.auto import tqdm

from rlar.data.batches import ImageData
from rlar.runtime.cache import cached_artifact, load_checkpoint
from rlar.tokenizer.digits_vq import DigitsVQ, code_usage_perplexity, psnr, train_digits_vq
from rlar.tokenizer.frozen import FrozenTokenizer

log = logging.getLogger(__name__)


def plain(cfg) -> dict:
    return OmegaConf.to_container(cfg, resolve=True) if isinstance(cfg, DictConfig) else dict(cfg or {})


def build_digits_vq(data: ImageData, codebook_size: int = 64, embed_dim: int = 16, hidden: int = 64,
                    checkpoint: str | None = None, train: dict | None = None, cache_dir: str | None = None,
                    chunk_size: int = 256) -> FrozenTokenizer:
    """The embedded VQ tokenizer, frozen. ``checkpoint``: a state dict to load; null trains one (cached)."""
    train = {"steps": 600, "lr": 2e-3, "batch_size": 64, "seed": 0, **plain(train)}
    arch = {"image_size": data.image_size, "channels": data.channels, "codebook_size": codebook_size,
            "embed_dim": embed_dim, "hidden": hidden}
    model = DigitsVQ(**arch)
    if checkpoint:
        model.load_state_dict(load_checkpoint(checkpoint, "tokenizer.checkpoint"))
        source = str(checkpoint)
    else:
        def build():
            generator = torch.Generator().manual_seed(train["seed"])
            with tqdm(total=train["steps"], desc="train tokenizer", leave=False) as bar:
                train_digits_vq(model, data.train_images, train["steps"], train["lr"], train["batch_size"],
                                generator, progress=bar)
            return model.state_dict(), _quality(model, data)

        state, path = cached_artifact(cache_dir, "digits_vq", {"arch": arch, "train": train,
                                                               "data": data.fingerprint()}, build)
        model.load_state_dict(state)
        source = str(path)
    metrics = _quality(model, data)
    log.info("tokenizer %s: eval reconstruction PSNR %.2f dB, code perplexity %.1f of %d",
             source, metrics["psnr_db"], metrics["code_perplexity"], codebook_size)
    return FrozenTokenizer(model, chunk_size=chunk_size, source=source, metrics=metrics)


@torch.no_grad()
def _quality(model: DigitsVQ, data: ImageData) -> dict:
    model.eval()
    codes = model.encode_indices(data.eval_images)
    return {"psnr_db": psnr(model.decode_code(codes), data.eval_images),
            "code_perplexity": code_usage_perplexity(codes, model.codebook_size)}
