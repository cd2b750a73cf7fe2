"""Condition Contrastive Alignment (CCA): a class-conditional policy fine-tuned on data pairs, not on samples.

Each data image's codes ``x`` are scored under their own label ``c`` (the positive) and under a mismatched label
``c'`` drawn from the other classes (the negative), each against the frozen prior ``pi_ref``:

    loss = -log sigmoid(beta * (log pi(x|c) - log pi_ref(x|c)))
           - neg_weight * log sigmoid(-beta * (log pi(x|c') - log pi_ref(x|c')))

with sequence log-probabilities (teacher forcing, summed over the tokens, temperature 1, no guidance). Raising
``pi(x|c)`` and lowering ``pi(x|c')`` sharpens what the label says about the image, which is what classifier-free
guidance does at sampling time: the fine-tuned policy is meant to be sampled unguided.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F


def check_num_classes(num_classes: int) -> None:
    """A mismatched label needs another class: at least 2."""
    if num_classes < 2:
        raise ValueError(f"algorithm=cca contrasts each image's label with another class, but the data has "
                         f"num_classes={num_classes}; use data with at least 2 classes, or another algorithm")


def mismatched_labels(labels: torch.Tensor, num_classes: int, generator: torch.Generator) -> torch.Tensor:
    """``labels [N]`` (class ids in ``[0, num_classes)``), each replaced by a class drawn uniformly from the
    ``num_classes - 1`` others: never the label itself."""
    check_num_classes(num_classes)
    if labels.numel() and (labels.min() < 0 or labels.max() >= num_classes):
        raise ValueError(f"algorithm=cca needs class ids in [0, {num_classes}), got labels in "
                         f"[{int(labels.min())}, {int(labels.max())}]")
    offset = torch.randint(1, num_classes, labels.shape, generator=generator).to(labels.device)  # [N] in [1, K)
    return (labels + offset) % num_classes


def cca_loss(logp_pos: torch.Tensor, ref_pos: torch.Tensor, logp_neg: torch.Tensor, ref_neg: torch.Tensor,
             beta: float, neg_weight: float) -> tuple[torch.Tensor, dict[str, float]]:
    """The mean CCA loss over ``N`` pairs from sequence log-probs ``[N]`` (the policy's and the prior's, under the
    image's own label and under the mismatched one), and its stats: the implicit rewards ``beta * (log pi - log
    pi_ref)`` of positives and negatives, and the fraction of pairs whose positive reward beats the negative's."""
    reward_pos = beta * (logp_pos - ref_pos)  # [N]
    reward_neg = beta * (logp_neg - ref_neg)  # [N]
    loss = (-F.logsigmoid(reward_pos) - neg_weight * F.logsigmoid(-reward_neg)).mean()
    with torch.no_grad():
        stats = {"loss/cca": loss.item(),
                 "cca/reward_pos": float(reward_pos.mean()),
                 "cca/reward_neg": float(reward_neg.mean()),
                 "cca/accuracy": float((reward_pos > reward_neg).float().mean())}
    return loss, stats


@dataclass
class CCA:
    """Condition Contrastive Alignment: trains on the batch's data pairs (``trains_on_data``), so the loop samples
    and scores nothing during training (the reward still scores the evaluations). ``beta > 0`` also builds the
    frozen reference, as the KL term of the sampling algorithms does."""

    # scale of the log-ratio to the frozen prior (the implicit reward's temperature); > 0. The log-ratios are sums
    # over the image's T tokens and each term saturates once |beta * log-ratio| is a few units, so a smaller beta
    # lets the policy move further from the prior: stronger class fidelity, less diversity (docs/algorithms.md)
    beta: float = 0.1
    # lambda: weight of the mismatched-label term against the positive one
    neg_weight: float = 1.0
    # images per forward pass (each with its positive and negative row); the gradients of the whole batch are
    # accumulated, one optimizer step per iteration
    minibatch_size: int = 64

    trains_on_data = True
    value_head = False  # no critic

    def __post_init__(self):
        if not self.beta > 0:
            raise ValueError(f"algorithm.beta must be > 0 for algorithm=cca (it scales the log-ratio to the frozen "
                             f"prior), got {self.beta}; e.g. algorithm.beta=0.02")
        if self.neg_weight < 0:
            raise ValueError(f"algorithm.neg_weight must be >= 0 (the weight of the mismatched-label term), got "
                             f"{self.neg_weight}")
        if self.minibatch_size < 1:
            raise ValueError(f"algorithm.minibatch_size must be >= 1 (images per forward pass), got "
                             f"{self.minibatch_size}")

    def negatives(self, labels: torch.Tensor, num_classes: int, generator: torch.Generator) -> torch.Tensor:
        """A mismatched label ``[N]`` for each of ``labels [N]`` (:func:`mismatched_labels`)."""
        return mismatched_labels(labels, num_classes, generator)

    def loss(self, logp_pos: torch.Tensor, ref_pos: torch.Tensor, logp_neg: torch.Tensor, ref_neg: torch.Tensor
             ) -> tuple[torch.Tensor, dict[str, float]]:
        """:func:`cca_loss` under this algorithm's ``beta`` and ``neg_weight``."""
        return cca_loss(logp_pos, ref_pos, logp_neg, ref_neg, self.beta, self.neg_weight)

    def state_dict(self) -> dict:
        return {}

    def load_state_dict(self, state: dict) -> None:
        pass
