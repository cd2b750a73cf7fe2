"""The teacher-forced training pass that the raster policies (GPT, LlamaGen) share."""

from __future__ import annotations

import torch
from torch import nn


class TeacherForced(nn.Module):
    """A raster policy whose ``hidden_states(tokens, labels)`` gives the final states ``[N, T, D]`` (position t
    predicts token t) and whose ``head`` maps them to logits."""

    decodes_in_parallel = False  # free-running samples come from the KV-cached raster sampler (rlar.rollout.sampling)

    def forward(self, tokens: torch.Tensor, labels: torch.Tensor | None = None, hidden: bool = False):
        """Teacher forcing: tokens ``[N, T]`` -> logits ``[N, T, V]``; ``logits[:, t]`` predicts ``tokens[:, t]``.
        With ``hidden=True``: ``(logits, final hidden states [N, T, D])``. Training passes go through here, so
        that DDP and FSDP wrappers see them."""
        states = self.hidden_states(tokens, labels)
        logits = self.head(states)
        return (logits, states) if hidden else logits
