"""What a finished run prints (the eval reward, each term of a mix read from the first and last evaluations, and the
judge's metrics, prior -> after RL) and returns to a sweeper (its ``optimized_metric``)."""

import pytest

from rlar.run import closing_lines, optimized_value


def summary() -> dict:
    history = [{"iteration": 0, "eval/reward": 0.0, "eval/reward/disc": -0.0016, "eval/reward/cls": 0.8327},
               {"iteration": 150, "eval/reward": 0.0, "eval/reward/disc": -0.5, "eval/reward/cls": 0.9},
               {"iteration": 300, "eval/reward": 0.0, "eval/reward/disc": -0.8594, "eval/reward/cls": 0.9399}]
    return {"eval_reward_before": 0.0, "eval_reward_after": 0.0, "eval_fd_before": 30.61, "eval_fd_after": 15.92,
            "history": history}


def test_a_z_scored_mix_prints_each_term_from_the_first_and_last_evaluation():
    lines = closing_lines(summary(), "discriminator_loo_fd_class", normalized=True)
    assert lines[0].startswith("eval reward (reward=discriminator_loo_fd_class, mean over the held-out split): "
                               "prior 0.00000 -> after RL 0.00000 (z-scored: 0 by construction")
    assert lines[1:] == ["eval/reward/disc: prior -0.0016 -> after RL -0.8594",
                         "eval/reward/cls: prior 0.8327 -> after RL 0.9399",
                         "eval/fd: prior 30.61 -> after RL 15.92"]


def test_a_single_reward_prints_no_terms_and_no_z_score_note():
    s = summary()
    s["history"] = [{"iteration": 0, "eval/reward": -0.2}, {"iteration": 300, "eval/reward": -0.1}]
    s.update(eval_reward_before=-0.2, eval_reward_after=-0.1)
    assert closing_lines(s, "l2", normalized=False) == [
        "eval reward (reward=l2, mean over the held-out split): prior -0.20000 -> after RL -0.10000",
        "eval/fd: prior 30.61 -> after RL 15.92"]


def test_a_run_returns_the_last_evaluation_of_its_optimized_metric():
    assert optimized_value(summary(), "eval/reward") == 0.0
    assert optimized_value(summary(), "eval/fd") == 15.92


def test_an_objective_missing_from_the_summary_exits_naming_what_it_has():
    has = r"\['eval_fd', 'eval_reward'\]"
    with pytest.raises(SystemExit, match=rf"optimized_metric=eval/steps was not measured .*{has}"):
        optimized_value(summary(), "eval/steps")
