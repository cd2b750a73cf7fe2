"""Generalized advantage estimation over token positions, with the reward at the last token (and any per-token
rewards at their own)."""

from __future__ import annotations

import torch


def gae_terminal_reward(values: torch.Tensor, rewards: torch.Tensor, mask: torch.Tensor, gamma: float = 1.0,
                        lam: float = 0.95, token_rewards: torch.Tensor | None = None
                        ) -> tuple[torch.Tensor, torch.Tensor]:
    """values ``[N, T]`` (V of the state before each token), rewards ``[N]`` paid after the last token,
    mask ``[N, T]`` (True on action tokens), ``token_rewards`` ``[N, T]`` paid after each token (e.g. a per-token KL
    penalty; None: none). Returns (advantages ``[N, T]``, returns ``[N, T]``), 0 off the mask.

    ``delta_t = r_t + gamma * V_{t+1} - V_t`` with ``r_t`` the token's reward, plus the sample's at ``T-1``, and
    ``V_T = 0``; ``A_t = delta_t + gamma * lam * A_{t+1}``.
    """
    n, t_len = values.shape
    values = torch.where(mask, values.float(), 0.0)  # a row left out (NaN values too) adds nothing
    adv = torch.zeros_like(values)
    running = torch.zeros(n, device=values.device)
    for t in reversed(range(t_len)):
        next_value = values[:, t + 1] if t + 1 < t_len else torch.zeros(n, device=values.device)
        reward = rewards.float() if t == t_len - 1 else torch.zeros(n, device=values.device)
        if token_rewards is not None:
            reward = reward + token_rewards[:, t].float()
        delta = reward + gamma * next_value - values[:, t]
        running = delta + gamma * lam * running
        adv[:, t] = running
    return torch.where(mask, adv, 0.0), torch.where(mask, adv + values, 0.0)
