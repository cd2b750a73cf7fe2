"""``eval/attr/*``: how often free-running samples show what their prompts ask (the digits text task's captions,
``rlar.data.captions``): per check (class, thickness, slant) and all of a prompt's checks at once."""

from __future__ import annotations

import logging
from collections.abc import Sequence

from rlar.data.captions import GRAMMAR, Caption, parse_caption

log = logging.getLogger(__name__)


def parsed_prompts(prompts: Sequence[str] | None) -> list[Caption] | None:
    """What each prompt asks for, or None when there are no prompts or one is outside the captions' grammar (then
    no ``eval/attr/*``: free-form captions have no attributes to measure)."""
    if prompts is None:
        return None
    parsed = [parse_caption(p) for p in prompts]
    unparsed = [p for p, c in zip(prompts, parsed, strict=True) if c is None]
    if unparsed:
        log.info("no eval/attr/*: %d of the %d eval prompts are not digit captions (%s), e.g. %r", len(unparsed),
                 len(prompts), GRAMMAR, unparsed[0])
        return None
    return parsed


def metric_name(check: str) -> str:
    """A check's metric: ``class_ok`` -> ``eval/attr/class_acc``."""
    return f"eval/attr/{check.removesuffix('_ok')}_acc"
