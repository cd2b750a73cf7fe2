"""Build the evaluation classifier: train it on the data's train split once (seeded, off the loop's random
streams) and cache it, keyed by the data and the settings."""

from __future__ import annotations

import logging
import time
from dataclasses import asdict

import torch
from omegaconf import DictConfig, OmegaConf
from tqdm.auto import tqdm

from rlar.config.schemas import EvalClassifierSchema
from rlar.data.batches import ImageData
from rlar.eval.model.classifier import DigitsClassifier
from rlar.eval.model.train import accuracy, train_classifier
from rlar.runtime.cache import cached_artifact, cached_metrics, seeded

log = logging.getLogger(__name__)


def classifier_spec(settings: dict | DictConfig | None, schema: type = EvalClassifierSchema) -> dict:
    """``{"arch": {...}, "train": {...}}``: ``settings`` over ``schema``'s defaults; with the data, the cache key.
    Two classifiers of the same spec are one model (one cache file)."""
    settings = OmegaConf.to_container(settings, resolve=True) if isinstance(settings, DictConfig) else dict(
        settings or {})
    defaults = asdict(schema())
    train = {**defaults.pop("train"), **settings.pop("train", {})}
    return {"arch": {**defaults, **settings}, "train": train}


def build_eval_classifier(data: ImageData, cache_dir: str | None = None, settings: dict | DictConfig | None = None,
                          schema: type = EvalClassifierSchema) -> DigitsClassifier:
    """The frozen classifier (eval mode, CPU) of ``data``'s classes; ``settings``: ``eval.classifier_model`` (the
    judge) or a reward's ``classifier`` (``input_size``, ``width``, ``features``, ``train.*``) over ``schema``'s
    defaults. It carries ``source`` (the cache file) and ``metrics`` (held-out accuracy, as its build measured it).
    Training reads only the train images its batches draw (``steps x batch_size``; data on disk decoded on access).
    The global random state is left as it was."""
    spec = classifier_spec(settings, schema)
    train, arch = spec["train"], {**spec["arch"], "channels": data.channels, "num_classes": data.num_classes}
    with seeded(train["seed"]):  # the loop's random state stays untouched
        model = DigitsClassifier(**arch)

        def build(checkpoint):
            generator = torch.Generator().manual_seed(train["seed"])
            tic = time.perf_counter()
            with tqdm(total=train["steps"], desc="train eval classifier", leave=False) as bar:
                train_classifier(model, data.train_batches, data.train_labels, train["steps"], train["lr"],
                                 train["batch_size"], train["max_shift"], generator, progress=bar,
                                 checkpoint=checkpoint)
            return model.state_dict(), {"eval_accuracy": accuracy(model, data),
                                        "train_seconds": time.perf_counter() - tic}

        state, path = cached_artifact(cache_dir, "eval_classifier",
                                      {"arch": arch, "train": train, "data": data.fingerprint()}, build)
    model.load_state_dict(state)
    model.eval().requires_grad_(False)
    model.source = str(path)
    measured = cached_metrics(path).get("eval_accuracy")  # at its build: a load reads no held-out image
    model.metrics = {"eval_accuracy": accuracy(model, data) if measured is None else measured}
    role = "judge" if schema is EvalClassifierSchema else "reward"  # the cache names both eval_classifier
    log.info("%s classifier %s: held-out accuracy %.4f", role, model.source, model.metrics["eval_accuracy"])
    return model
