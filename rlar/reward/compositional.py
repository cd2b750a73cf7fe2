"""The compositional reward of the digits text task: each thing a prompt asks ("a thick seven leaning right") is
checked on the sample on its own, the class by the reward's own classifier (never the judge), the thickness and
slant by their pixel measurements (``rlar.data.attributes``); GenEval's idea on the digits."""

from __future__ import annotations

import torch
from omegaconf import DictConfig

from rlar.contracts import Reward
from rlar.data.batches import ImageData
from rlar.data.captions import CHECKS, GRAMMAR, caption_checks, parse_caption
from rlar.reward.classifier import reward_classifier


class CompositionalReward(Reward):
    """``reward(images, targets, meta) -> (passed [N], {"class_ok", "thickness_ok", "slant_ok", "all_ok": [N]})``:
    the fraction of the checks of each sample's prompt ``meta["prompts"][i]`` that pass, in [0, 1]. Each check
    component is 1 or 0, NaN where the prompt does not ask it; ``all_ok`` is 1 when every asked check passed.
    ``targets`` are ignored (a prompt-only data set gives none). A prompt outside the captions' grammar is an error;
    a None prompt (a sample drawn from the null caption, ``rollout.label_dropout``) is absent: NaN everywhere. A
    non-finite image (a failed decode) is NaN everywhere too: unscored, left out of the update.
    """

    may_be_absent = True  # NaN marks a sample without a prompt (WeightedReward leaves it out of that sample's total)

    def __init__(self, data: ImageData, classifier: dict | DictConfig | None, cache_dir: str | None = None):
        self.classifier = reward_classifier(data, classifier, cache_dir)

    @torch.no_grad()
    def __call__(self, images: torch.Tensor, targets: torch.Tensor | None = None, meta: dict | None = None):
        prompts = (meta or {}).get("prompts")
        if prompts is None or len(prompts) != len(images):
            raise ValueError(f"reward=compositional needs each sample's prompt as meta['prompts'] ({len(images)} "
                             f"strings), got {None if prompts is None else len(prompts)}: use data with captions "
                             "(data.captions=attributes, data=prompts, ...)")
        present = [i for i, p in enumerate(prompts) if p is not None]
        asks = [parse_caption(prompts[i]) for i in present]
        if None in asks:
            bad = prompts[present[asks.index(None)]]
            raise ValueError(f"reward=compositional cannot read the prompt {bad!r}: it checks digit captions of the "
                             f"form '{GRAMMAR}' (e.g. 'a thick seven leaning right')")
        finite = images.flatten(1).isfinite().all(1).tolist()  # [N]: a failed (non-finite) image is left unscored
        scored = [k for k, i in enumerate(present) if finite[i]]
        index = torch.tensor([present[k] for k in scored], dtype=torch.long, device=images.device)  # [M]
        checks = {name: torch.full((len(images),), float("nan"), device=images.device)
                  for name in (*CHECKS, "all_ok")}  # {name: [N]}, NaN = absent or unscored
        if scored:
            seen = self.classifier.get(images.device)(images[index]).argmax(1)  # [M]
            for name, value in caption_checks(images[index], [asks[k] for k in scored], seen).items():  # {name: [M]}
                checks[name][index] = value
        passed = torch.stack([checks[name] for name in CHECKS]).nanmean(0)  # [N]
        return passed, checks
