"""The loop end to end under options: NaN rewards, per-condition statistics in checkpoints, warm-up then PPO with
a clipped critic, the teacher-forced and prefix rollout modes."""

import json
import math
from types import SimpleNamespace

import pytest
import torch
from hydra.utils import instantiate
from omegaconf import OmegaConf
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from rlar import loop
from rlar.algorithm import update as update_module
from rlar.algorithm.cca import CCA
from rlar.config.store import compose_config
from rlar.loop import check_scored, evaluation_line, progress_metrics, train_rl_loop
from rlar.reward.reconstruction import ReconstructionReward
from rlar.rollout.collect import collect_rollout


class HalfNaNReward(ReconstructionReward):
    """-L2, but NaN for every other sample: a reward model that fails on some items."""

    def __call__(self, images, targets, meta=None):
        reward, parts = super().__call__(images, targets, meta)
        reward = reward.clone()
        reward[::2] = float("nan")
        return reward, parts


@pytest.mark.slow
def test_nan_rewards_are_excluded_and_counted(tiny, tmp_path, tb_scalars):
    cfg = compose_config([*tiny, "eval.max_items=4", "eval.samples_per_item=1"])
    OmegaConf.set_struct(cfg, False)
    cfg.reward = {"_target_": f"{__name__}.HalfNaNReward", "kind": "l2"}
    summary = train_rl_loop(cfg, tmp_path)
    assert tb_scalars(tmp_path, "reward/nonfinite_count") == [8.0, 8.0]  # half of 4 items x 4 generations
    sampled = [rate * seconds for rate, seconds in zip(tb_scalars(tmp_path, "perf/tokens_per_s"),
                                                        tb_scalars(tmp_path, "time/rollout"), strict=True)]
    assert sampled == pytest.approx([16 * 64] * 2, rel=1e-4)  # every sampled token, scored or not
    assert all(math.isfinite(v) for v in tb_scalars(tmp_path, "reward/mean"))
    assert all(math.isfinite(v) for v in tb_scalars(tmp_path, "loss/policy"))
    assert summary["history"][-1]["eval/nan_count"] == 2.0  # 4 held-out items x 1 sample, half NaN
    assert math.isfinite(summary["eval_reward_after"])


@pytest.mark.slow
def test_a_sample_drawn_from_nonfinite_logits_leaves_the_update(tiny, tmp_path, tb_scalars, monkeypatch, caplog):
    def collect_with_a_broken_row(*args, **kwargs):
        rollout = collect_rollout(*args, **kwargs)
        rollout.logprobs[1, 3] = float("nan")  # sample 1 of 16 met a NaN logit row at position 3
        return rollout

    monkeypatch.setattr("rlar.loop.collect_rollout", collect_with_a_broken_row)
    train_rl_loop(compose_config([*tiny, "eval.max_items=4", "eval.samples_per_item=1"]), tmp_path)
    assert all(math.isfinite(v) for v in tb_scalars(tmp_path, "loss/policy"))  # the other 15 still update
    assert all(math.isfinite(v) for v in tb_scalars(tmp_path, "policy/grad_norm"))
    assert tb_scalars(tmp_path, "reward/nonfinite_count") == [1.0, 1.0]  # unscored: out of the advantages
    assert tb_scalars(tmp_path, "rollout/nonfinite_frac") == [1 / 16, 1 / 16]
    assert "1 of 16 samples were drawn from non-finite logits" in caplog.text


@pytest.mark.slow
def test_condition_statistics_are_saved_in_checkpoints(tiny, tmp_path):
    cfg = compose_config([*tiny, "algorithm=reinforce", "algorithm.baseline=condition", "algorithm.num_generations=4",
                          "algorithm.minibatch_size=8"])
    train_rl_loop(cfg, tmp_path)
    state = torch.load(tmp_path / "checkpoints" / "last.pt", weights_only=True)["algorithm"]["tracker"]
    assert sum(state["count"].values()) == 2 * 16  # 2 iterations x 4 images x 4 generations
    assert set(state["count"]) <= set(range(10))  # keyed by class


@pytest.mark.slow
def test_warmup_then_ppo_with_value_head(tiny, tmp_path, tb_scalars):
    cfg = compose_config([*tiny, "algorithm=ppo", "algorithm.value_head=true", "algorithm.epochs=2",
                          "algorithm.minibatch_size=8", "train.warmup_steps=3", "algorithm.beta=0.05",
                          "algorithm.value_clip=0.2"])
    summary = train_rl_loop(cfg, tmp_path)
    assert math.isfinite(summary["warmup_ce"])
    assert len(tb_scalars(tmp_path, "warmup/ce")) == 3
    assert all(v > 0 for v in tb_scalars(tmp_path, "loss/value"))
    assert all(0 <= v <= 1 for v in tb_scalars(tmp_path, "policy/value_clipfrac"))
    assert all(v >= 0 for v in tb_scalars(tmp_path, "loss/kl"))
    logged = EventAccumulator(str(tmp_path / "tensorboard"))
    logged.Reload()
    tags = logged.Tags()["scalars"]  # the groups' ties do not measure GAE's signal: not logged as if they did
    assert "adv/frac_zero_std" not in tags and "reward/nonfinite_count" in tags
    saved = torch.load(tmp_path / "checkpoints" / "last.pt", weights_only=True)
    assert saved["critic"]["weight"].shape == (1, 96)


@pytest.mark.slow
def test_rollout_modes_run_end_to_end_with_ratio_one(tiny, tmp_path, tb_scalars):
    for mode, extra in (("teacher_forced", []), ("prefix", ["rollout.prefix_len=16"])):
        cfg = compose_config([*tiny, f"rollout.mode={mode}", *extra, "rollout.cfg_scale=2.0",
                              "rollout.temperature=0.7", "eval.max_items=4"])
        train_rl_loop(cfg, tmp_path / mode)
        assert max(tb_scalars(tmp_path / mode, "policy/ratio_max_abs_dev")) <= 1e-5


class NaNReward(ReconstructionReward):
    """A reward model that scores nothing; ``closed`` counts the calls of its ``close``."""

    closed = 0

    def __call__(self, images, targets, meta=None):
        reward, parts = super().__call__(images, targets, meta)
        return torch.full_like(reward, float("nan")), parts

    def close(self):
        NaNReward.closed += 1


def test_a_streak_of_unscored_iterations_stops_at_the_limit():
    scored, unscored = {"reward/mean": 0.5}, {"reward/mean": float("nan")}
    assert check_scored(check_scored(0, unscored, 3, 1), unscored, 3, 2) == 2
    assert check_scored(2, scored, 3, 3) == 0  # a scored iteration resets the streak
    with pytest.raises(RuntimeError, match="train.max_nonfinite_iterations=3"):
        check_scored(2, unscored, 3, 3)


@pytest.mark.parametrize("overrides, shown", [
    ([], ("reward/disc", "reward/fd", "reward/cls")),  # the default mix is z-scored: its mean is 0 whatever moved
    (["reward=l2"], ("reward/mean",)),
    (["reward=vapi"], ("reward/mean",)),  # a mix that is not z-scored: its mean says what moved
    (["algorithm=cca"], ("loss/cca",)),
    (["reward=remote", "+reward.weights={clip: 2.0, sharp: 1.0}", "reward.normalize=true"],
     ("reward/clip", "reward/sharp")),  # a remote client's weighted components (it has no reward.components)
])
def test_the_progress_bar_shows_what_moves(overrides, shown):
    cfg = compose_config(overrides)
    run = SimpleNamespace(cfg=cfg, algorithm=instantiate(cfg.algorithm))
    assert progress_metrics(run) == shown


def test_the_log_gives_the_judges_numbers_and_a_reward_mean_only_where_it_means_something():
    result = {"eval/reward": 1e-9, "eval/fd": 30.6123, "eval/class_acc": 0.8441, "eval/recall": 0.88}
    assert evaluation_line(result, compose_config([]).reward) == "eval/fd 30.612, eval/class_acc 0.8441"
    assert evaluation_line({**result, "eval/reward": -0.2}, compose_config(["reward=l2"]).reward) == (
        "eval/reward -0.2, eval/fd 30.612, eval/class_acc 0.8441")
    assert evaluation_line({"eval/reward": -0.2}, compose_config(["reward=l2"]).reward) == "eval/reward -0.2"


@pytest.mark.slow
def test_a_reward_that_scores_nothing_stops_the_run(tiny, tmp_path, recwarn):
    cfg = compose_config([*tiny, "train.iterations=5", "train.max_nonfinite_iterations=2"])
    OmegaConf.set_struct(cfg, False)
    cfg.reward = {"_target_": f"{__name__}.NaNReward", "kind": "l2"}
    closed = NaNReward.closed
    with pytest.raises(RuntimeError, match="iteration 2: no reward was finite"):
        train_rl_loop(cfg, tmp_path)
    assert not [w for w in recwarn if "lr_scheduler.step()" in str(w.message)]  # no update ran: nothing to warn of
    assert NaNReward.closed == closed + 1  # the reward is closed when the run ends, also on an error


def test_the_warm_up_runs_at_the_run_s_precision_and_clips_as_the_update_does(tiny, tmp_path, monkeypatch):
    under_autocast, clipped = [], []
    ce, clip = loop.teacher_forced_ce, loop.clip_and_step
    monkeypatch.setattr(loop, "teacher_forced_ce", lambda *args: under_autocast.append(
        torch.is_autocast_enabled("cpu")) or ce(*args))
    monkeypatch.setattr(loop, "clip_and_step", lambda params, optimizer, norm: clipped.append(norm) or clip(
        params, optimizer, norm))
    cfg = compose_config([*tiny, "train.warmup_steps=2", "train.iterations=1", "hardware.precision=bf16",
                          "train.max_grad_norm=0.5"])
    assert math.isfinite(train_rl_loop(cfg, tmp_path)["warmup_ce"])
    assert under_autocast == [True, True] and clipped == [0.5, 0.5]  # the two warm-up steps (the update: its own)


@pytest.fixture(scope="module")
def straight_two_iterations(tiny, tmp_path_factory):
    """The summary of a run of 2 iterations evaluated after each, never interrupted."""
    overrides = [*tiny, "train.iterations=2", "eval.every=1", "train.checkpoint_every=100"]  # saved at 2 only
    return overrides, train_rl_loop(compose_config(overrides), tmp_path_factory.mktemp("straight"))


@pytest.mark.slow  # four short runs each
@pytest.mark.parametrize("failing", [1, 2])  # the evaluation of iteration 1, or of the last one
def test_a_failed_evaluation_saves_the_run_and_the_same_command_evaluates_it_first(straight_two_iterations, tmp_path,
                                                                                  monkeypatch, failing):
    overrides, straight = straight_two_iterations
    calls, evaluation = [], loop.evaluation

    def failing_once(run):
        calls.append(1)
        if len(calls) == failing + 1:  # the prior's evaluation is the first call
            raise ConnectionError("the reward server went away")
        return evaluation(run)

    monkeypatch.setattr(loop, "evaluation", failing_once)
    with pytest.raises(ConnectionError):
        train_rl_loop(compose_config(overrides), tmp_path)
    record = torch.load(tmp_path / "checkpoints" / "last.pt", weights_only=True)
    assert record["iteration"] == failing and record["summary"]["pending_evaluation"] == failing
    resumed = train_rl_loop(compose_config(overrides), tmp_path)
    assert [h["iteration"] for h in resumed["history"]] == [0, 1, 2] and "pending_evaluation" not in resumed
    assert resumed["history"] == straight["history"]  # the same evaluations, the failed one made when it resumed
    calls.clear()
    assert train_rl_loop(compose_config(overrides), tmp_path)["history"] == straight["history"] and not calls


def scoring_that_fails_at(call: int, calls: list, fail):
    """``rlar.loop.decode_and_score``, but its ``call``-th call scores (so a learning reward learns from the batch)
    and then ``fail(result)``: raises, or returns what the loop gets instead."""
    real = loop.decode_and_score

    def scoring(*args):
        calls.append(1)
        result = real(*args)
        return fail(result) if len(calls) == call else result

    return scoring


@pytest.mark.slow  # three short runs
def test_a_reward_failing_before_the_update_saves_the_iteration_before_and_resumes_exactly(straight_two_iterations,
                                                                                         tmp_path, monkeypatch):
    overrides, straight = straight_two_iterations  # saved at iteration 2 only

    def server_gone(result):
        raise ConnectionError("the reward server went away")

    calls = []
    monkeypatch.setattr(loop, "decode_and_score", scoring_that_fails_at(2, calls, server_gone))
    with pytest.raises(ConnectionError):
        train_rl_loop(compose_config(overrides), tmp_path)
    record = torch.load(tmp_path / "checkpoints" / "last.pt", weights_only=True)
    assert record["iteration"] == 1 and "pending_evaluation" not in record["summary"]
    # the default reward learned from iteration 2's batch before the failure: the record keeps its state before it
    monkeypatch.undo()
    assert train_rl_loop(compose_config(overrides), tmp_path)["history"] == straight["history"]


def losses_that_fail_at(call: int, calls: list, error: Exception):
    """``rlar.algorithm.update.minibatch_loss``, but its ``call``-th call raises ``error`` (the tiny runs: two
    minibatches an iteration)."""
    real = update_module.minibatch_loss

    def loss(*args):
        calls.append(1)
        if len(calls) == call:
            raise error
        return real(*args)

    return loss


@pytest.mark.slow  # four short runs
@pytest.mark.parametrize("extra", [[], ["algorithm=reinforce", "algorithm.baseline=condition", "algorithm.min_count=2",
                                        "algorithm.buffer_size=16", "algorithm.minibatch_size=8"]])
def test_a_failure_in_the_update_before_its_first_step_saves_the_iteration_before_and_resumes_exactly(
        tiny, tmp_path, tmp_path_factory, monkeypatch, extra):
    """An out-of-memory error in the first backward pass of iteration 2: its advantages had moved the algorithm's
    per-condition window (REINFORCE's baseline) and the update had drawn its minibatches; the record keeps both as
    they were before the iteration, so the resumed run is the straight one."""
    overrides = [*tiny, "train.iterations=2", "eval.every=1", "train.checkpoint_every=100", *extra]
    straight = train_rl_loop(compose_config(overrides), tmp_path_factory.mktemp("straight"))
    monkeypatch.setattr(update_module, "minibatch_loss",
                        losses_that_fail_at(3, [], RuntimeError("out of memory in the backward pass")))
    with pytest.raises(RuntimeError, match="out of memory"):
        train_rl_loop(compose_config(overrides), tmp_path)
    record = torch.load(tmp_path / "checkpoints" / "last.pt", weights_only=True)
    assert record["iteration"] == 1 and [h["iteration"] for h in record["summary"]["history"]] == [0, 1]
    monkeypatch.undo()
    assert train_rl_loop(compose_config(overrides), tmp_path)["history"] == straight["history"]


@pytest.mark.slow
def test_a_failure_after_an_optimizer_step_of_the_update_saves_nothing(straight_two_iterations, tmp_path,
                                                                       monkeypatch, caplog):
    """The second minibatch of iteration 2 fails after the first one's optimizer step: the state before the update is
    gone, so the last checkpoint (here none) stands, and the log says so."""
    overrides, _ = straight_two_iterations
    monkeypatch.setattr(update_module, "minibatch_loss",
                        losses_that_fail_at(4, [], RuntimeError("out of memory in the backward pass")))
    with pytest.raises(RuntimeError, match="out of memory"):
        train_rl_loop(compose_config(overrides), tmp_path)
    assert not (tmp_path / "checkpoints" / "last.pt").exists()
    assert "iteration 2 failed after an optimizer step had begun" in caplog.text


@pytest.mark.slow  # two short runs
def test_a_failure_right_after_a_resume_leaves_the_checkpoint_it_resumed_untouched(tiny, tmp_path, monkeypatch):
    overrides = [*tiny, "train.iterations=1", "train.checkpoint_format=sharded"]
    train_rl_loop(compose_config(overrides), tmp_path)  # finished: last.pt, last_sharded.1/ and the export policy.pt
    checkpoints = tmp_path / "checkpoints"
    saved = lambda: {p.name: p.stat().st_mtime_ns for p in checkpoints.iterdir() if p.name != "hydra"}  # noqa: E731
    before = saved()  # (hydra/: the config record, refreshed as each run starts)

    def server_gone(result):
        raise ConnectionError("the reward server went away")

    monkeypatch.setattr(loop, "decode_and_score", scoring_that_fails_at(1, [], server_gone))
    with pytest.raises(ConnectionError):  # extended by one iteration, which fails before its update
        train_rl_loop(compose_config([*overrides[:-2], "train.iterations=2", overrides[-1]]), tmp_path)
    assert saved() == before  # nothing saved again


@pytest.mark.slow  # three short runs
def test_cca_failing_before_its_update_saves_the_iteration_before_and_resumes_exactly(tiny_cca, tmp_path,
                                                                                    tmp_path_factory, monkeypatch):
    overrides = [*tiny_cca, "train.iterations=2", "eval.every=1", "train.checkpoint_every=100"]
    straight = train_rl_loop(compose_config(overrides), tmp_path_factory.mktemp("straight"))
    calls, negatives = [], CCA.negatives

    def failing_once(self, *args):
        calls.append(1)
        drawn = negatives(self, *args)  # the update stream has drawn: the record keeps it as it was before
        if len(calls) == 2:
            raise OSError("an image of the batch could not be read")
        return drawn

    monkeypatch.setattr(CCA, "negatives", failing_once)
    with pytest.raises(OSError):
        train_rl_loop(compose_config(overrides), tmp_path)
    assert torch.load(tmp_path / "checkpoints" / "last.pt", weights_only=True)["iteration"] == 1
    monkeypatch.undo()
    assert train_rl_loop(compose_config(overrides), tmp_path)["history"] == straight["history"]

@pytest.mark.slow
def test_the_limit_of_unscored_iterations_saves_the_run_and_its_evaluation_waits(tiny, tmp_path, monkeypatch):
    overrides = [*tiny, "train.iterations=2", "eval.every=1", "train.checkpoint_every=100",
                 "train.max_nonfinite_iterations=1"]

    def no_finite_reward(result):
        samples, rewards, components, metrics = result
        return samples, torch.full_like(rewards, float("nan")), components, metrics

    monkeypatch.setattr(loop, "decode_and_score", scoring_that_fails_at(2, [], no_finite_reward))
    with pytest.raises(RuntimeError, match="max_nonfinite_iterations=1"):
        train_rl_loop(compose_config(overrides), tmp_path)
    record = torch.load(tmp_path / "checkpoints" / "last.pt", weights_only=True)
    assert record["iteration"] == 2 and record["summary"]["pending_evaluation"] == 2
    assert [h["iteration"] for h in record["summary"]["history"]] == [0, 1]
    assert record["summary"]["unscored_iterations"] == 1  # the limit reached, kept for a resume
    monkeypatch.undo()
    resumed = train_rl_loop(compose_config(overrides), tmp_path)
    assert [h["iteration"] for h in resumed["history"]] == [0, 1, 2] and "pending_evaluation" not in resumed
    assert "unscored_iterations" not in resumed  # loop state, not a result
    assert "unscored_iterations" not in json.loads((tmp_path / "summary.json").read_text())


@pytest.mark.slow  # three short runs
def test_the_count_of_iterations_without_a_finite_reward_survives_a_resume(tiny, tmp_path, monkeypatch):
    """No reward is finite, and the limit is 2: the straight run stops at iteration 2. A run whose reward server
    fails in iteration 2 is saved after iteration 1, one unscored iteration counted; resumed, it stops at iteration
    2 too (the count started again from 0 before, so it went on to iteration 3)."""
    overrides = [*tiny, "train.iterations=4", "train.max_nonfinite_iterations=2", "train.checkpoint_every=100",
                 "eval.every=100"]
    real, calls = loop.decode_and_score, []

    def unscored(*args, fail_at=None):
        calls.append(1)
        if len(calls) == fail_at:
            raise ConnectionError("the reward server went away")
        samples, rewards, components, metrics = real(*args)
        return samples, torch.full_like(rewards, float("nan")), components, metrics

    monkeypatch.setattr(loop, "decode_and_score", unscored)
    with pytest.raises(RuntimeError, match="iteration 2: no reward was finite"):
        train_rl_loop(compose_config(overrides), tmp_path / "straight")
    calls.clear()
    monkeypatch.setattr(loop, "decode_and_score", lambda *args: unscored(*args, fail_at=2))
    with pytest.raises(ConnectionError):
        train_rl_loop(compose_config(overrides), tmp_path / "resumed")
    assert torch.load(tmp_path / "resumed" / "checkpoints" / "last.pt", weights_only=True)["iteration"] == 1
    monkeypatch.setattr(loop, "decode_and_score", unscored)
    with pytest.raises(RuntimeError, match="iteration 2: no reward was finite"):
        train_rl_loop(compose_config(overrides), tmp_path / "resumed")


@pytest.mark.slow
@pytest.mark.parametrize("extra,logged", [
    (["algorithm.importance_sampling_level=sequence", "algorithm.clip_eps=3e-4", "algorithm.clip_eps_high=4e-4",
      "algorithm.delta=4", "algorithm.target_kl=0.05", "algorithm.epochs=2", "algorithm.minibatch_size=8"],
     "policy/kl_stopped"),
    (["algorithm=reinforce", "algorithm.baseline=leave_one_out", "algorithm.minibatch_size=8"], "loss/policy"),
    (["algorithm=reinforce", "algorithm.baseline=leave_one_out", "algorithm.beta=0.05", "algorithm.kl_penalty=reward",
      "algorithm.minibatch_size=8"], "objective/kl"),
    (["algorithm=reinforce", "algorithm.baseline=condition", "algorithm.min_count=2", "algorithm.buffer_size=4",
      "algorithm.minibatch_size=8"], "loss/policy"),
])
def test_the_algorithm_options_of_the_references_run_end_to_end(tiny, tmp_path, tb_scalars, extra, logged):
    """GSPO's sequence ratio with its clip range, the two-sided clip and an early stop on the KL; RLOO, also with the
    KL to the prior in its reward (TRL's); a windowed per-condition baseline: each trains through the loop with
    finite losses, and resumes (the window is saved)."""
    train_rl_loop(compose_config([*tiny, "eval.max_items=4", *extra]), tmp_path)
    assert len(tb_scalars(tmp_path, logged)) == 2 and all(math.isfinite(v) for v in tb_scalars(tmp_path, "loss/policy"))
    if "algorithm.kl_penalty=reward" in extra:  # the first rollout's policy is the prior; the loss has no KL term
        assert abs(tb_scalars(tmp_path, "objective/kl")[0]) < 1e-3
        with pytest.raises(KeyError):
            tb_scalars(tmp_path, "loss/kl")
    if "algorithm.buffer_size=4" in extra:  # 32 rewards over at most 10 classes: some class's window is full
        tracker = torch.load(tmp_path / "checkpoints" / "last.pt", weights_only=True)["algorithm"]["tracker"]
        assert max(len(window) for window in tracker["recent"].values()) == 4
    summary = train_rl_loop(compose_config([*tiny, "eval.max_items=4", "train.iterations=3", *extra]), tmp_path)
    assert summary["history"][-1]["iteration"] == 3


@pytest.mark.slow  # two short runs
def test_token_weighting_options_run_through_the_loop(tiny, tmp_path, tb_scalars):
    """The sampler correction under bf16 and the top-entropy tokens, set from the command line: the weights stay
    within bf16 rounding of 1, every loss is finite, and the first iteration's policy loss, on the same rollout as a
    run without them, differs (a fifth of its tokens read)."""
    bf16 = [*tiny, "hardware.precision=bf16"]
    train_rl_loop(compose_config(bf16), tmp_path / "plain")
    cfg = compose_config([*bf16, "algorithm.sampler_correction_cap=2", "algorithm.top_entropy_quantile=0.2"])
    summary = train_rl_loop(cfg, tmp_path / "options")
    weights = tb_scalars(tmp_path / "options", "policy/sampler_correction")
    assert len(weights) == 2 and all(0.9 < w < 1.1 for w in weights)
    assert all(0.0 <= c < 0.05 for c in tb_scalars(tmp_path / "options", "policy/sampler_correction_capped"))
    assert all(math.isfinite(v) for v in tb_scalars(tmp_path / "options", "loss/policy"))
    assert math.isfinite(summary["eval_reward_after"])
    first = [tb_scalars(tmp_path / run, tag)[0] for run in ("plain", "options")
             for tag in ("reward/mean", "loss/policy")]
    assert first[0] == first[2] and first[1] != first[3]  # the same rollout and rewards, another loss


@pytest.mark.slow  # three short runs
@pytest.mark.parametrize("failing", [1, 3])  # the first warm-up step (the prior's evaluation kept), or the third
def test_a_failure_in_the_warm_up_saves_the_steps_done_and_resumes_exactly(tiny, tmp_path, tmp_path_factory,
                                                                         monkeypatch, failing):
    """The failing step had drawn from torch's global stream (as ARPG's training orders do): the record keeps the
    stream as it was before the step, so the resumed run draws what the straight one did."""
    overrides = [*tiny, "train.warmup_steps=3", "train.iterations=1", "train.checkpoint_every=100"]
    state, ce = {"calls": 0, "fail_at": None}, loop.teacher_forced_ce

    def drawing(*args):
        loss = ce(*args) * (1 + 0.1 * torch.rand(()))  # a draw of the global stream in the forward pass
        state["calls"] += 1
        if state["calls"] == state["fail_at"]:
            raise OSError("an image of the batch could not be read")
        return loss

    monkeypatch.setattr(loop, "teacher_forced_ce", drawing)
    straight = train_rl_loop(compose_config(overrides), tmp_path_factory.mktemp("straight"))
    state.update(calls=0, fail_at=failing)
    with pytest.raises(OSError):
        train_rl_loop(compose_config(overrides), tmp_path)
    record = torch.load(tmp_path / "checkpoints" / "last.pt", weights_only=True)
    assert (record["iteration"], record["warmup_done"]) == (0, failing - 1)
    assert [h["iteration"] for h in record["summary"]["history"]] == [0]  # the prior's evaluation, kept
    state.update(calls=0, fail_at=None)
    resumed = train_rl_loop(compose_config(overrides), tmp_path)
    assert resumed["history"] == straight["history"] and resumed["warmup_ce"] == straight["warmup_ce"]


@pytest.mark.slow
def test_a_failure_inside_a_warm_up_optimizer_step_saves_nothing(tiny, tmp_path, monkeypatch, caplog):
    """The weights and the optimizer's moments may be half stepped: no state to resume exactly, so nothing is saved
    (the last checkpoint, here none, stands)."""
    calls, step = [], loop.clip_and_step

    def failing_second(params, optimizer, max_grad_norm):
        calls.append(1)
        if len(calls) == 2:  # the optimizer step has begun (here: run) when the error comes
            optimizer.step()
            raise RuntimeError("out of memory in the optimizer step")
        return step(params, optimizer, max_grad_norm)

    monkeypatch.setattr(loop, "clip_and_step", failing_second)
    with pytest.raises(RuntimeError, match="out of memory"):
        train_rl_loop(compose_config([*tiny, "train.warmup_steps=3", "train.iterations=1"]), tmp_path)
    assert not (tmp_path / "checkpoints" / "last.pt").exists()
    assert "warm-up step 2 of 3 failed after an optimizer step had begun" in caplog.text


@pytest.mark.slow
def test_a_run_with_an_optimizer_that_takes_no_betas_trains(tiny, tmp_path):
    cfg = compose_config([*tiny, "optimizer._target_=torch.optim.SGD", "optimizer.betas=null", "optimizer.lr=0.01",
                          "+optimizer.momentum=0.9", "eval.max_items=4", "eval.samples_per_item=1"])
    train_rl_loop(cfg, tmp_path)
    optimizer = torch.load(tmp_path / "checkpoints" / "last.pt", weights_only=True)["optimizer"]
    (group,) = optimizer["param_groups"]
    assert group["momentum"] == 0.9 and "betas" not in group and group["lr"] == 0.01  # SGD's, as configured
    assert all("momentum_buffer" in state for state in optimizer["state"].values())  # it stepped
