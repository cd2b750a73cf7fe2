import pytest
import torch

from rlar.policy.gpt import GPT
from rlar.policy.prior import pretrain_gpt


@pytest.mark.parametrize("steps", [2, 20, 60])  # 20: OneCycleLR once divided by zero at a 1-step warm-up
def test_pretraining_runs_for_any_step_count_and_lowers_the_loss(steps):
    torch.manual_seed(0)
    policy = GPT(vocab_size=8, block_size=6, num_classes=2, n_layer=1, n_head=2, n_embd=16)
    codes = torch.arange(6).repeat(32, 1) % 8  # one fixed sequence: easy to learn
    losses = pretrain_gpt(policy, codes, torch.zeros(32, dtype=torch.long), steps, 1e-2, 16, 0.1,
                          torch.Generator().manual_seed(0))
    assert len(losses) == steps
    if steps >= 20:
        assert losses[-1] < 0.5 * losses[0]
