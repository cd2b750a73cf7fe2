"""The compositional reward of the digits text task: each thing a prompt asks ("a thick seven leaning right") is
checked on the sample on its own, the class by the reward's own classifier (never the judge), the thickness and
slant by their pixel measurements (``rlar.data.attributes``); GenEval's idea on the digits."""

from __future__ import annotations

import torch
from omegaconf import DictConfig

from rlar.contracts import Reward
from rlar.data.batches import ImageData
from rlar.data.captions import GRAMMAR, caption_checks, parse_caption
from rlar.reward.classifier import reward_classifier


class CompositionalReward(Reward):
    """``reward(images, targets, meta) -> (passed [N], {"class_ok", "thickness_ok", "slant_ok", "all_ok": [N]})``:
    the fraction of the checks of each sample's prompt ``meta["prompts"][i]`` that pass, in [0, 1]. Each check
    component is 1 or 0, NaN where the prompt does not ask it; ``all_ok`` is 1 when every asked check passed.
    ``targets`` are ignored (a prompt-only data set gives none). A prompt outside the captions' grammar is an error.
    """

    def __init__(self, data: ImageData, classifier: dict | DictConfig | None, cache_dir: str | None = None):
        self.classifier = reward_classifier(data, classifier, cache_dir)

    @torch.no_grad()
    def __call__(self, images: torch.Tensor, targets: torch.Tensor | None = None, meta: dict | None = None):
        prompts = (meta or {}).get("prompts")
        if prompts is None or len(prompts) != len(images):
            raise ValueError(f"reward=compositional needs each sample's prompt as meta['prompts'] ({len(images)} "
                             f"strings), got {None if prompts is None else len(prompts)}: use data with captions "
                             "(data.captions=attributes, data=prompts, ...)")
        asks = [parse_caption(p) for p in prompts]
        if None in asks:
            bad = prompts[asks.index(None)]
            raise ValueError(f"reward=compositional cannot read the prompt {bad!r}: it checks digit captions of the "
                             f"form '{GRAMMAR}' (e.g. 'a thick seven leaning right')")
        seen = self.classifier.get(images.device)(images).argmax(1)  # [N]
        checks = caption_checks(images, asks, seen)  # {name: [N]}
        passed = torch.stack([checks[name] for name in ("class_ok", "thickness_ok", "slant_ok")]).nanmean(0)  # [N]
        return passed, checks
