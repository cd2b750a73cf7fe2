"""Conditions shared by every policy: class labels or caption features, and the null condition of guidance.

A :class:`Condition` holds one condition per row. A class condition is ``labels [N]`` (negative: the null class). A
text condition is ``text [N, L, E]``, the features a text encoder (``rlar.text``) gives a caption, with ``mask [N, L]``
(True: a caption token, False: padding) and ``null [N]`` (True: the row reads the policy's learned null caption
instead of its features: the unconditional rows of guidance, caption dropout). Captions are left-padded, so the
last of the L condition tokens, the one that predicts the first image token, is a caption token. A null row keeps
its mask, as LlamaGen trains and samples its null caption. A text condition may carry ``labels`` too, for rewards
and statistics; the policy does not read them.

Policies and samplers also take a plain label tensor ``[N]`` or None (every row the null class), as before.
"""

from __future__ import annotations

from dataclasses import dataclass, fields

import torch


@dataclass(frozen=True)
class Condition:
    """One condition per row; ``null_like``, ``with_null`` and ``dropped`` give the null condition of guidance."""

    labels: torch.Tensor | None = None  # [N] long; negative: the null class
    text: torch.Tensor | None = None  # [N, L, E] caption features
    mask: torch.Tensor | None = None  # [N, L] bool: True = a caption token, False = padding (left)
    null: torch.Tensor | None = None  # [N] bool: True = the learned null caption replaces the features

    def __post_init__(self):
        if self.text is None:
            if self.labels is None:
                raise ValueError("a Condition needs class labels [N] or caption features text [N, L, E]")
            if self.mask is not None or self.null is not None:
                raise ValueError("Condition.mask and Condition.null belong to a text condition (text [N, L, E])")
            return
        if self.text.dim() != 3:
            raise ValueError(f"Condition.text must be caption features [N, L, E], got shape {tuple(self.text.shape)}")
        n, length = self.text.shape[:2]
        if self.mask is None or self.mask.shape != (n, length) or self.mask.dtype != torch.bool:
            raise ValueError(f"Condition.mask must be a bool [N, L] = [{n}, {length}] tensor beside text")
        if self.null is None or self.null.shape != (n,) or self.null.dtype != torch.bool:
            raise ValueError(f"Condition.null must be a bool [N] = [{n}] tensor beside text")
        if self.labels is not None and self.labels.shape != (n,):
            raise ValueError(f"Condition.labels must be [N] = [{n}], got shape {tuple(self.labels.shape)}")

    @classmethod
    def of_text(cls, text: torch.Tensor, mask: torch.Tensor | None = None, labels: torch.Tensor | None = None
                ) -> Condition:
        """A text condition of caption features ``[N, L, E]``: every token a caption token unless ``mask`` says
        otherwise, no row null."""
        n, length = text.shape[:2]
        mask = torch.ones(n, length, dtype=torch.bool, device=text.device) if mask is None else mask.bool()
        return cls(labels, text, mask, torch.zeros(n, dtype=torch.bool, device=text.device))

    @property
    def is_text(self) -> bool:
        return self.text is not None

    def __len__(self) -> int:
        return len(self.text if self.is_text else self.labels)

    @property
    def device(self) -> torch.device:
        return (self.text if self.is_text else self.labels).device

    def _map(self, fn) -> Condition:
        return Condition(**{f.name: None if getattr(self, f.name) is None else fn(getattr(self, f.name))
                            for f in fields(self)})

    def __getitem__(self, rows) -> Condition:
        """The conditions of ``rows`` (an index tensor, a slice or a bool mask)."""
        return self._map(lambda t: t[rows])

    def repeat_interleave(self, repeats: int) -> Condition:
        """Each row ``repeats`` times, adjacent (the G generations of an item)."""
        return self._map(lambda t: t.repeat_interleave(repeats, 0))

    def to(self, device) -> Condition:
        return self._map(lambda t: t.to(device))

    def dropped(self, drop: torch.Tensor) -> Condition:
        """The rows where ``drop [N]`` (bool) is True replaced by the null condition (label -1, the null caption)."""
        drop = drop.to(self.device)
        labels = None if self.labels is None else torch.where(drop, torch.full_like(self.labels, -1), self.labels)
        if not self.is_text:
            return Condition(labels)
        return Condition(labels, self.text, self.mask, self.null | drop)

    def null_like(self) -> Condition:
        """Every row the null condition."""
        return self.dropped(torch.ones(len(self), dtype=torch.bool, device=self.device))

    def with_null(self) -> Condition:
        """``[2N]`` rows for a guided batch: these conditions, then the null condition of each."""
        return cat([self, self.null_like()])


def cat(conditions: list[Condition]) -> Condition:
    """The rows of ``conditions`` one after the other (all class or all text, of one caption length)."""
    first = conditions[0]
    return Condition(**{f.name: None if getattr(first, f.name) is None
                        else torch.cat([getattr(c, f.name) for c in conditions]) for f in fields(first)})


def as_condition(condition: Condition | torch.Tensor | None) -> Condition | None:
    """A :class:`Condition` of a label tensor ``[N]``; a condition or None as it is."""
    return Condition(condition) if torch.is_tensor(condition) else condition


def class_labels(condition: Condition | torch.Tensor | None, owner: str = "this policy") -> torch.Tensor | None:
    """The class labels ``[N]`` a class-conditional policy reads; a text condition is refused, naming ``owner``."""
    if isinstance(condition, Condition):
        if condition.is_text:
            raise ValueError(f"{owner} is class-conditional and got a text condition; use a text-conditioned policy "
                             "(policy=gpt or llamagen with a text_encoder) or class labels")
        return condition.labels
    return condition


def class_ids(labels: Condition | torch.Tensor | None, batch: int, null_class: int, device) -> torch.Tensor:
    """Labels ``[N]`` with ``None`` / negative entries replaced by ``null_class``: ``[N]`` long."""
    labels = class_labels(labels)
    if labels is None:
        return torch.full((batch,), null_class, dtype=torch.long, device=device)
    return torch.where(labels < 0, torch.full_like(labels, null_class), labels)


def text_condition(condition: Condition | torch.Tensor | None, batch: int, owner: str = "this policy") -> Condition:
    """The text condition a text-conditioned policy reads; None means every row the null caption (it then needs
    features of some shape: refused, as the policy cannot know the caption's mask)."""
    if not isinstance(condition, Condition) or not condition.is_text:
        got = "no condition" if condition is None else "class labels"
        raise ValueError(f"{owner} is text-conditioned and got {got}; give a text condition (a Condition of caption "
                         "features from the run's text_encoder)")
    if len(condition) != batch:
        raise ValueError(f"{len(condition)} text conditions for {batch} rows")
    return condition
