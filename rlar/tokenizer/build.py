"""Build the embedded tokenizer: load a checkpoint, or train it on the data once and cache it."""

from __future__ import annotations

import logging
from dataclasses import asdict

import torch
from omegaconf import DictConfig, OmegaConf
from tqdm.auto import tqdm

from rlar.config.schemas import from_options
from rlar.data.batches import ImageData
from rlar.reward.metrics import psnr as psnr_each
from rlar.runtime.cache import cached_artifact, load_checkpoint, seeded
from rlar.tokenizer.digits_vq import DigitsVQ, code_usage_perplexity, train_digits_vq
from rlar.tokenizer.frozen import FrozenTokenizer
from rlar.tokenizer.schemas import DigitsVQSchema

log = logging.getLogger(__name__)
QUALITY_CHUNK = 1024  # eval images encoded and decoded at a time to measure the tokenizer (the digits': all at once)


def plain(cfg) -> dict:
    return OmegaConf.to_container(cfg, resolve=True) if isinstance(cfg, DictConfig) else dict(cfg or {})


def build_digits_vq(data: ImageData, **options) -> FrozenTokenizer:
    """The embedded VQ tokenizer, frozen. ``options``: the fields of :class:`DigitsVQSchema`; a ``checkpoint`` is
    loaded, else one is trained (cached)."""
    spec = from_options(DigitsVQSchema, options)
    train = asdict(spec.train)
    arch = {"image_size": data.image_size, "channels": data.channels, "codebook_size": spec.codebook_size,
            "embed_dim": spec.embed_dim, "hidden": spec.hidden}
    with seeded(train["seed"]):  # its initial weights: the trained codebook depends only on the cache key
        model = DigitsVQ(**arch)
    if spec.checkpoint:
        model.load_state_dict(load_checkpoint(spec.checkpoint, "tokenizer.checkpoint"))
        source = str(spec.checkpoint)
    else:
        def build(checkpoint):
            generator = torch.Generator().manual_seed(train["seed"])
            with tqdm(total=train["steps"], desc="train tokenizer", leave=False) as bar:
                train_digits_vq(model, data.train_images, train["steps"], train["lr"], train["batch_size"],
                                generator, progress=bar, checkpoint=checkpoint)
            return model.state_dict(), _quality(model, data)

        spec_key = {"arch": arch, "train": train, "data": data.fingerprint()}
        state, path = cached_artifact(spec.cache_dir, "digits_vq", spec_key, build)
        model.load_state_dict(state)
        source = str(path)
    if data.eval_images_of(slice(0, 0)) is None:  # prompt-only data: nothing to measure the reconstruction on
        return FrozenTokenizer(model, chunk_size=spec.chunk_size, source=source, metrics={})
    metrics = _quality(model, data)
    log.info("tokenizer %s: eval reconstruction PSNR %.2f dB, code perplexity %.1f of %d",
             source, metrics["psnr_db"], metrics["code_perplexity"], spec.codebook_size)
    return FrozenTokenizer(model, chunk_size=spec.chunk_size, source=source, metrics=metrics)


@torch.no_grad()
def _quality(model: DigitsVQ, data: ImageData) -> dict:
    """The eval split's mean reconstruction PSNR and code perplexity, :data:`QUALITY_CHUNK` images at a time (a
    stored split in fp32 is 4x its bytes)."""
    model.eval()
    codes, db = [], []
    for lo in range(0, len(data.eval_labels), QUALITY_CHUNK):
        images = data.eval_images_of(slice(lo, lo + QUALITY_CHUNK))  # [n, C, H, W]
        codes.append(model.encode_indices(images))  # [n, T]
        db.append(psnr_each(model.decode_code(codes[-1]), images))  # [n]
    return {"psnr_db": float(torch.cat(db).mean()),
            "code_perplexity": code_usage_perplexity(torch.cat(codes), model.codebook_size)}
