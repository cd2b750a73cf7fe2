"""Training runs with a cosine lr schedule and the policy's moving average: a run stopped halfway and resumed
computes exactly what the uninterrupted run computes, and evaluation samples the average."""

import pytest
import torch

import rlar.loop
from rlar.config.store import compose_config
from rlar.loop import train_rl_loop
from rlar.runtime.ema import exported_policy

pytestmark = pytest.mark.slow  # every test here trains

SCHEDULE = ["train.iterations=4", "eval.every=100", "optimizer.lr=1e-4", "scheduler=cosine", "scheduler.warmup_steps=1",
            "scheduler.min_lr_ratio=0.1", "train.ema_decay=0.9"]
# 1 warm-up iteration, then a cosine over 3: multipliers 1, 1, 0.1 + 0.45 (1 + cos(pi/3)), 0.1 + 0.45 (1 + cos(2pi/3))
LRS = [1e-4, 1e-4, 0.775e-4, 0.325e-4]


def evaluated_weights(monkeypatch):
    """The state dict of the policy each evaluation samples, in order."""
    seen = []
    real_evaluate = rlar.loop.evaluate

    def evaluate(policy, *args, **kwargs):
        seen.append({k: v.clone() for k, v in policy.state_dict().items()})
        return real_evaluate(policy, *args, **kwargs)

    monkeypatch.setattr(rlar.loop, "evaluate", evaluate)
    return seen


@pytest.mark.parametrize("fmt", ["consolidated", "sharded"])
def test_stopped_and_resumed_run_equals_the_uninterrupted_one(tiny, tmp_path, monkeypatch, tb_scalars, fmt,
                                                            stop_after_two_updates):
    cfg = compose_config([*tiny, *SCHEDULE, f"train.checkpoint_format={fmt}"])
    straight = train_rl_loop(cfg, tmp_path / "straight")

    with monkeypatch.context() as patch:
        stop_after_two_updates(patch, "policy_update")
        with pytest.raises(KeyboardInterrupt):
            train_rl_loop(cfg, tmp_path / "resumed")
    assert torch.load(tmp_path / "resumed" / "checkpoints" / "last.pt", weights_only=True)["iteration"] == 2
    resumed = train_rl_loop(cfg, tmp_path / "resumed")

    lrs = tb_scalars(tmp_path / "straight", "optimizer/lr")
    assert lrs == tb_scalars(tmp_path / "resumed", "optimizer/lr")
    assert lrs == pytest.approx(LRS, rel=1e-6)  # TensorBoard keeps float32
    records = [torch.load(tmp_path / run / "checkpoints" / "last.pt", weights_only=True)
               for run in ("straight", "resumed")]
    assert records[0]["scheduler"] == records[1]["scheduler"]
    assert records[0]["scheduler"]["_last_lr"] == [1e-4 * 0.1]  # the lr after the last iteration: the minimum
    for ema in (True, False):
        weights = [exported_policy(tmp_path / run / "checkpoints", ema) for run in ("straight", "resumed")]
        assert weights[0].keys() == weights[1].keys()
        assert all(torch.equal(weights[0][k], weights[1][k]) for k in weights[0]), f"ema={ema}"
    if fmt == "consolidated":
        first, second = (r["optimizer"]["state"] for r in records)
        assert all(torch.equal(first[i][k], second[i][k]) for i in first for k in first[i])
    assert straight["eval_reward_after"] == resumed["eval_reward_after"]


def test_evaluation_samples_the_average(tiny, tmp_path, monkeypatch):
    seen = evaluated_weights(monkeypatch)
    train_rl_loop(compose_config([*tiny, *SCHEDULE]), tmp_path)
    record = torch.load(tmp_path / "checkpoints" / "last.pt", weights_only=True)
    prior, after = seen[0], seen[-1]  # the evaluations before RL (the average is the prior then) and after
    assert all(torch.equal(after[k], record["ema"][k]) for k in after)
    assert any(not torch.equal(after[k], record["policy"][k]) for k in after)
    assert any(not torch.equal(after[k], prior[k]) for k in after)
