"""torchrun with 2 CPU processes (gloo): DDP and FSDP2 runs of the embedded default, checkpoints across world sizes."""

import copy
import json
import logging
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from torch.distributed.fsdp import FSDPModule
from torchrun import torchrun, torchrun_source

import rlar.runtime.distributed
from rlar.config.store import compose_config
from rlar.loop import train_rl_loop
from rlar.policy.arpg import ARPG
from rlar.policy.gpt import GPT
from rlar.policy.llamagen import LlamaGen
from rlar.rollout.sampling import policy_logprobs
from rlar.run import rank_overrides
from rlar.runtime.data_parallel import transformer_blocks
from rlar.runtime.hardware import Hardware

CPU = ["hardware.device=cpu", "hardware.precision=fp32"]
# two minibatches per iteration with one optimizer step: the first backward must not all-reduce
ACCUM = ["algorithm.grad_accum=2", "train.iterations=3", "eval.every=3"]


def run_under_torchrun(args, cwd, nproc=2):
    """``rlar-run args`` under torchrun."""
    return torchrun(["-m", "rlar.run", *args], cwd, nproc)


REDUCE = """
import torch
import torch.distributed as dist
from rlar.reward.mixture import zscore
from rlar.runtime import distributed
dist.init_process_group("gloo")
rank = dist.get_rank()
stats = {"loss/policy": 1.0 + 2 * rank, "policy/ratio_max_abs_dev": [0.25, 0.0625][rank],
         "reward/remote_failed_items": [3.0, 5.0][rank]}
out = distributed.mean_over_ranks(stats, "cpu", maxima=("policy/ratio_max_abs_dev",), totals=("failed_items",))
mine = torch.tensor([[1.0, 2.0], [3.0, 4.0, 5.0]][rank])
mean, std = distributed.mean_std_over_ranks(mine)
scores = zscore(torch.cat([mine, torch.tensor([float("nan")])]), pooled=True)  # a NaN is left out, and stays
if rank == 1:
    print(sorted(out.items()), round(mean.item(), 6), round(std.item(), 6), [round(x, 4) for x in scores.tolist()])
dist.destroy_process_group()
"""


@pytest.mark.slow
def test_a_deviation_is_its_largest_over_ranks_a_loss_its_mean_a_count_its_sum_and_advantages_pool_every_rank(
        tmp_path):
    """PPO's value-head advantages, and a z-scored mix's terms in training, are standardized by the moments of every
    rank's rows, as in one process."""
    proc = torchrun_source(REDUCE, tmp_path)
    pooled = torch.tensor([1.0, 2.0, 3.0, 4.0, 5.0])
    expected = [round(x, 4) for x in ((pooled[2:] - 3.0) / pooled.std()).tolist()] + [float("nan")]
    assert (f"[('loss/policy', 2.0), ('policy/ratio_max_abs_dev', 0.25), ('reward/remote_failed_items', 8.0)] 3.0 "
            f"{round(pooled.std().item(), 6)} {expected}") in proc.stdout  # a count: the sum over ranks


BATCH_REWARDS = """
import sys
import torch
import torch.distributed as dist
from torch import nn
from rlar.data.batches import ImageData
from rlar.reward.coverage import CoverageReward
from rlar.reward.loo_fd import LeaveOneOutFDReward


class Flatten(nn.Module):
    def features(self, images):
        return images.flatten(1)  # [N, 2]: the pixels are the features


class TrainSplit(ImageData):
    def __init__(self):
        g = torch.Generator().manual_seed(0)
        self.train_images, self.train_labels = torch.randn(20, 1, 1, 2, generator=g), torch.arange(20) % 2


def rewards():
    made = [LeaveOneOutFDReward(TrainSplit(), None, ema=0.5, class_conditional=True),
            CoverageReward(TrainSplit(), None, bank_size=5)]
    for reward in made:
        reward.classifier.model = Flatten()
    return made


g = torch.Generator().manual_seed(1)
batches = [torch.randn(8, 1, 1, 2, generator=g) for _ in range(2)]  # [8, 1, 1, 2] each: two global batches
labels = torch.tensor([0, 1, 1, 0, 1, 0, 0, 1])
rank = 0
if sys.argv[1] == "two":
    dist.init_process_group("gloo")
    rank = dist.get_rank()
rows = slice(None) if sys.argv[1] == "one" else slice(4 * rank, 4 * rank + 4)
made = rewards()
scores = [[r(b[rows], None, {"labels": labels[rows]})[0] for b in batches] for r in made]
torch.save({"scores": scores, "states": [r.state_dict() for r in made]}, sys.argv[2].format(rank))
if sys.argv[1] == "two":  # as Hardware.teardown does: gloo's threads left running at exit can abort the process
    dist.destroy_process_group()
"""


UNEQUAL_ROWS = """
import sys
import torch
import torch.distributed as dist
from rlar.algorithm.algorithms import GRPO
from rlar.algorithm.update import policy_update
from rlar.policy.gpt import GPT
from rlar.rollout.types import Rollout
from rlar.runtime.data_parallel import fsdp_mesh, release_mesh, wrap

torch.manual_seed(0)
policy = GPT(vocab_size=16, block_size=8, num_classes=2, n_layer=1, n_head=2, n_embd=16)
g = torch.Generator().manual_seed(1)
tokens, adv = torch.randint(0, 16, (16, 8), generator=g), torch.randn(16, generator=g)  # 4 items x 4 samples
kept = torch.ones(16, dtype=torch.bool)
kept[[1, 2, 3]] = False  # three unscored samples, all on rank 0
rows, strategy, mesh = slice(None), "none", None
if sys.argv[1] == "two":
    dist.init_process_group("gloo")
    rows, strategy = slice(8 * dist.get_rank(), 8 * dist.get_rank() + 8), sys.argv[3]
    mesh = fsdp_mesh(torch.device("cpu")) if strategy == "fsdp" else None
trained = wrap(policy, strategy, torch.device("cpu"), mesh=mesh)
rollout = Rollout(tokens[rows], tokens[rows], torch.zeros(16, 8)[rows], torch.arange(16)[rows] // 8,
                  torch.ones(16, 8, dtype=torch.bool)[rows] & kept[rows, None])
one_step = GRPO(num_generations=4, minibatch_size=16 if sys.argv[1] == "one" else 8)  # of all this process's rows
policy_update(trained, torch.optim.SGD(policy.parameters(), lr=0.5), one_step,
              rollout, adv[rows], {"temperature": 1.0, "cfg_scale": 1.0}, None, torch.Generator().manual_seed(0),
              recompute=True)
state = {k: v.full_tensor() if hasattr(v, "full_tensor") else v for k, v in policy.state_dict().items()}
if sys.argv[1] == "one" or dist.get_rank() == 0:
    torch.save(state, sys.argv[2])
if sys.argv[1] == "two":
    del trained, policy
    if mesh is not None:
        release_mesh(mesh)
    dist.destroy_process_group()
"""


@pytest.mark.slow
@pytest.mark.parametrize("strategy", ["ddp", "fsdp"])
def test_a_step_weighs_every_sample_alike_over_processes_with_unequal_rows(tmp_path, strategy):
    """Two processes, three of whose eight samples on rank 0 are unscored, take the step one process takes on the
    sixteen (the gradients are averaged over processes, so each process's loss is weighted by its share)."""
    torchrun_source(UNEQUAL_ROWS, tmp_path, "two", str(tmp_path / "two.pt"), strategy)
    script = tmp_path / "script.py"
    subprocess.run([sys.executable, str(script), "one", str(tmp_path / "one.pt")], check=True,
                   env={**os.environ, "OMP_NUM_THREADS": "1"})
    one, two = torch.load(tmp_path / "one.pt"), torch.load(tmp_path / "two.pt")
    assert all(torch.allclose(one[k], two[k], atol=1e-6) for k in one)


KL_STOP = """
import torch
import torch.distributed as dist
from rlar.algorithm.algorithms import PPO
from rlar.algorithm.update import policy_update
from rlar.policy.gpt import GPT
from rlar.rollout.types import Rollout
from rlar.runtime.data_parallel import wrap

dist.init_process_group("gloo")
rank = dist.get_rank()
torch.manual_seed(0)
policy = GPT(vocab_size=16, block_size=8, num_classes=2, n_layer=1, n_head=2, n_embd=16)
g = torch.Generator().manual_seed(1 + rank)
tokens, adv = torch.randint(0, 16, (8, 8), generator=g), torch.randn(8, generator=g)
scored = torch.full((8, 8), rank == 1)  # rank 0 scored nothing: it measures no KL
rollout = Rollout(tokens, tokens, torch.zeros(8, 8), torch.zeros(8, dtype=torch.long), scored)
stats = policy_update(wrap(policy, "ddp", torch.device("cpu")), torch.optim.SGD(policy.parameters(), lr=0.5),
                      PPO(num_generations=4, minibatch_size=4, epochs=4, target_kl=1e-6), rollout, adv,
                      {"temperature": 1.0, "cfg_scale": 1.0}, None, torch.Generator().manual_seed(0), recompute=True)
print(f"rank {rank}: minibatches {stats['policy/minibatches']:.0f} stopped {stats['policy/kl_stopped']:.0f}")
dist.destroy_process_group()
"""


@pytest.mark.slow
def test_an_early_stop_on_the_kl_is_one_decision_over_processes(tmp_path):
    """Every process ends the update at the same step (no process left in a collective), also one that scored no row
    and so measured no KL of its own (the weighting of the step's KL by scored rows: test_policy_update.py)."""
    proc = torchrun_source(KL_STOP, tmp_path)
    assert "rank 0: minibatches 2 stopped 1" in proc.stdout and "rank 1: minibatches 2 stopped 1" in proc.stdout


@pytest.mark.slow
def test_batch_rewards_score_and_learn_on_two_processes_as_on_one(tmp_path):
    """loo_fd's moving averages and coverage's bank are built from the global batch on every process (a resumed
    run reads rank 0's), and each sample is scored against the global batch, as one process scores it."""
    script = tmp_path / "batch_rewards.py"
    script.write_text(BATCH_REWARDS)
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    subprocess.run([sys.executable, str(script), "one", str(tmp_path / "one.pt")], check=True, env=env, timeout=300)
    torchrun([str(script), "two", str(tmp_path / "rank{}.pt")])
    one, *ranks = (torch.load(tmp_path / name, weights_only=True) for name in ("one.pt", "rank0.pt", "rank1.pt"))
    for r, per_reward in enumerate(one["scores"]):
        for b, whole in enumerate(per_reward):
            halves = torch.cat([ranks[0]["scores"][r][b], ranks[1]["scores"][r][b]])  # [8]: rank 0's rows first
            torch.testing.assert_close(halves, whole)
    for state in (ranks[0]["states"], ranks[1]["states"]):
        torch.testing.assert_close(state, one["states"])


def weights(path, key=None):
    state = torch.load(path, map_location="cpu", weights_only=True)
    return state[key] if key else state


@pytest.fixture(scope="module")
def two_process_runs(tiny, tmp_path_factory):
    """The same tiny run under DDP (consolidated checkpoint) and FSDP2 (sharded checkpoint), 2 processes each."""
    root = tmp_path_factory.mktemp("dist")
    runs = {}
    for strategy, fmt in (("ddp", "consolidated"), ("fsdp", "sharded")):
        out = root / strategy
        run_under_torchrun([*tiny, *ACCUM, f"hardware={strategy}", *CPU, f"train.checkpoint_format={fmt}",
                  f"hydra.run.dir={out}"], cwd=root)
        runs[strategy] = out
    return root, runs


@pytest.mark.slow
def test_one_output_dir_written_by_rank_zero(two_process_runs):
    root, runs = two_process_runs
    assert sorted(p.name for p in root.iterdir()) == ["ddp", "fsdp"]  # no per-rank or stray directories
    for out in runs.values():
        assert (out / ".hydra" / "config.yaml").is_file()
        assert len(list((out / "tensorboard").glob("events.*"))) == 1  # one writer
        summary = json.loads((out / "summary.json").read_text())
        assert summary["world_size"] == 2 and summary["iterations"] == 3


@pytest.mark.slow
def test_ddp_replicas_stay_identical_and_train(two_process_runs, tiny, cache_dir):
    _, runs = two_process_runs
    summary = json.loads((runs["ddp"] / "summary.json").read_text())
    assert summary["replica_max_abs_diff"] == 0.0
    trained = weights(runs["ddp"] / "checkpoints" / "last.pt", "policy")
    priors = [weights(p) for p in cache_dir.glob("gpt_prior-*.pt")]
    assert priors and all(max((trained[k] - prior[k]).abs().max() for k in trained) > 1e-6 for prior in priors)


@pytest.mark.slow
def test_fsdp_computes_what_ddp_computes(two_process_runs):
    """Same data, seeds and math; only the engine differs: the consolidated policies agree to float precision."""
    _, runs = two_process_runs
    ddp = weights(runs["ddp"] / "checkpoints" / "last.pt", "policy")
    fsdp = weights(runs["fsdp"] / "checkpoints" / "policy.pt")
    assert ddp.keys() == fsdp.keys()
    for k in ddp:
        torch.testing.assert_close(fsdp[k], ddp[k], atol=1e-5, rtol=1e-4)
    assert [p.parent.name for p in (runs["fsdp"] / "checkpoints").glob("last_sharded*/.metadata")] == ["last_sharded.3"]


@pytest.mark.slow
@pytest.mark.parametrize("strategy", ["ddp", "fsdp"])
def test_checkpoint_of_two_processes_resumes_in_one(two_process_runs, tiny, strategy, caplog):
    _, runs = two_process_runs
    out = runs[strategy]
    caplog.set_level(logging.INFO, logger="rlar.run_record")
    cfg = compose_config([*tiny, *ACCUM, "train.iterations=4", "eval.every=100"])
    summary = train_rl_loop(cfg, out)
    assert "resumed from" in caplog.text and "at iteration 3" in caplog.text
    assert "written by 2 processes, resumed on 1" in caplog.text
    assert summary["iterations"] == 4 and summary["world_size"] == 1
    assert [h["iteration"] for h in summary["history"]] == [0, 3, 4]


AVERAGED = ["train.ema_decay=0.9", "scheduler=cosine", "scheduler.warmup_steps=1"]


@pytest.fixture(scope="module")
def averaged_runs(tiny, tmp_path_factory):
    """The tiny run with an lr schedule and the policy's moving average under DDP (consolidated) and FSDP2
    (sharded), 2 processes each."""
    root = tmp_path_factory.mktemp("averaged")
    for strategy, fmt in (("ddp", "consolidated"), ("fsdp", "sharded")):
        run_under_torchrun([*tiny, *ACCUM, *AVERAGED, f"hardware={strategy}", *CPU, f"train.checkpoint_format={fmt}",
                  f"hydra.run.dir={root / strategy}"], cwd=root)
    return root


@pytest.mark.slow
def test_fsdp_averages_what_ddp_averages_and_resumes_in_one_process(averaged_runs, tiny):
    """The average of FSDP2's shards equals DDP's replicated average; the sharded checkpoint with it resumes on one
    process."""
    ddp = weights(averaged_runs / "ddp" / "checkpoints" / "last.pt")
    fsdp = weights(averaged_runs / "fsdp" / "checkpoints" / "ema.pt")
    assert ddp["ema"].keys() == fsdp.keys()
    for k in fsdp:
        torch.testing.assert_close(fsdp[k], ddp["ema"][k], atol=1e-5, rtol=1e-4)
    assert any(not torch.equal(ddp["ema"][k], ddp["policy"][k]) for k in fsdp)
    cfg = compose_config([*tiny, *ACCUM, *AVERAGED, "train.iterations=4", "eval.every=100",
                          "train.checkpoint_format=sharded"])
    assert train_rl_loop(cfg, averaged_runs / "fsdp")["iterations"] == 4


def test_strategy_outside_torchrun_is_a_clear_error(monkeypatch):
    monkeypatch.delenv("RANK", raising=False)
    with pytest.raises(ValueError, match="torchrun --nproc_per_node"):
        Hardware(strategy="ddp")
    with pytest.raises(ValueError, match="hardware.strategy must be one of"):
        Hardware(strategy="zero3")


def test_global_batch_must_split_over_processes(tiny, tmp_path, monkeypatch):
    monkeypatch.setattr(rlar.runtime.distributed, "world_size", lambda: 3)
    with pytest.raises(ValueError, match="train.batch_size=4 does not split over 3 processes"):
        train_rl_loop(compose_config(tiny), tmp_path)


def test_only_rank_zero_writes_hydra_files(monkeypatch):
    monkeypatch.setenv("RANK", "0")
    assert rank_overrides() == []
    monkeypatch.setenv("RANK", "1")
    assert rank_overrides() == ["hydra.output_subdir=null", "hydra/job_logging=stdout"]


def gloo_worker_threads() -> int:
    return sum(thread_name(task) == "pt_gloo_runloop" for task in Path("/proc/self/task").iterdir())


def thread_name(task: Path) -> str | None:
    """The name of the thread ``/proc/self/task/<id>``; None where it ended since the folder was listed."""
    try:
        return (task / "comm").read_text().strip()
    except FileNotFoundError:
        return None


def one_process_group(monkeypatch) -> None:
    """The environment torchrun gives a world of one process."""
    for name, value in {"RANK": "0", "LOCAL_RANK": "0", "WORLD_SIZE": "1", "MASTER_ADDR": "127.0.0.1",
                        "MASTER_PORT": "0"}.items():  # port 0: any free one (no other rank connects)
        monkeypatch.setenv(name, value)


def test_fsdp_gradients_equal_the_unwrapped_models_without_a_warning(monkeypatch, recwarn):
    """The logits are a view (a Linear over [N, T, D]), which FSDP2 warns of: an in-place op on them would skip its
    pre-backward hook. The loss reads them out of place, so the sharded gradients are the unwrapped model's."""
    one_process_group(monkeypatch)
    torch.manual_seed(0)
    plain = GPT(vocab_size=32, block_size=12, num_classes=5, n_layer=2, n_head=2, n_embd=32)
    tokens, labels = torch.randint(0, 32, (3, 12)), torch.tensor([0, 1, 4])
    hw = Hardware(strategy="fsdp")
    hw.setup()
    try:  # the sharded model and its gradients are gone before teardown, which then stops the group's threads
        sharded = {name: grad.full_tensor() for name, grad in gradients(hw.prepare(copy.deepcopy(plain)), tokens,
                                                                        labels).items()}
    finally:
        hw.teardown()
    for name, grad in gradients(plain, tokens, labels).items():
        torch.testing.assert_close(sharded[name], grad, rtol=1e-5, atol=1e-7)
    assert not [w for w in recwarn if "view tensor" in str(w.message)]


def gradients(model, tokens: torch.Tensor, labels: torch.Tensor) -> dict[str, torch.Tensor]:
    """The gradients of the mean guided, tempered log-probability of ``tokens [N, T]``."""
    logp, _ = policy_logprobs(model, tokens, labels, temperature=0.7, cfg_scale=2.0)  # [N, T, V]
    logp.mean().backward()
    return {name: p.grad for name, p in model.named_parameters()}


@pytest.mark.parametrize("policy, blocks", [
    (lambda: GPT(vocab_size=32, block_size=12, num_classes=5, n_layer=2, n_head=2, n_embd=32), 2),
    (lambda: LlamaGen(32, 16, 5, n_layer=3, n_head=2, dim=32, multiple_of=32), 3),
    (lambda: ARPG(32, 16, 5, n_layer=4, n_head=2, dim=32, multiple_of=32), 4),  # two passes: layers.*_dec
], ids=["gpt", "llamagen", "arpg"])
def test_fsdp_shards_every_transformer_block_as_a_unit_of_its_own(monkeypatch, policy, blocks):
    """Each block is gathered for its own forward and freed after it; a block left in the root unit stays gathered
    (FSDP2 does not reshard the root after forward), so the whole model would sit on every GPU."""
    one_process_group(monkeypatch)
    hw = Hardware(strategy="fsdp")
    hw.setup()
    try:  # the wrapped model is gone before teardown, which then stops the group's threads
        found, sharded, units = fsdp_units(hw.prepare(policy()))
    finally:
        hw.teardown()
    assert found == blocks and sharded == blocks and units == blocks + 1  # and the root


def fsdp_units(model) -> tuple[int, int, int]:
    """``(blocks found, blocks that are FSDP units, FSDP units)`` of a wrapped model."""
    found = transformer_blocks(model)
    return len(found), sum(isinstance(b, FSDPModule) for b in found), sum(isinstance(m, FSDPModule)
                                                                          for m in model.modules())


@pytest.mark.skipif(not Path("/proc/self/task").is_dir(), reason="counts the process's threads in /proc")
def test_teardown_stops_the_process_groups_threads_under_fsdp(monkeypatch):
    """FSDP2's mesh is kept alive by PyTorch's caches, and the process group with it: teardown must still stop the
    group's gloo threads, which left to the interpreter's shutdown can abort a finished run's process."""
    one_process_group(monkeypatch)
    before = gloo_worker_threads()
    hw = Hardware(strategy="fsdp")
    hw.setup()
    policy = hw.prepare(GPT(vocab_size=32, block_size=12, num_classes=5, n_layer=2, n_head=2, n_embd=32))
    policy(torch.randint(0, 32, (2, 12)), torch.tensor([0, 1])).mean().backward()
    assert gloo_worker_threads() > before
    del policy
    hw.teardown()
    assert gloo_worker_threads() == before


def test_bf16_autocast_keeps_logprobs_fp32(gpt):
    tokens = torch.randint(0, 32, (3, 12))
    with Hardware(precision="bf16").autocast():
        logp, _ = policy_logprobs(gpt, tokens, torch.tensor([0, 1, 2]), temperature=0.7, cfg_scale=2.0)
    assert logp.dtype == torch.float32
    torch.testing.assert_close(logp.exp().sum(-1), torch.ones(3, 12))


@pytest.mark.slow
def test_bf16_run_trains_with_ratio_near_one(tiny, tmp_path, tb_scalars):
    summary = train_rl_loop(compose_config([*tiny, "hardware.precision=bf16"]), tmp_path)
    assert all(torch.isfinite(torch.tensor(h["eval/reward"])) for h in summary["history"])
    # under bf16 the old log-probs are recomputed by the update's pass (algorithm.old_logprobs=auto): the first ratio
    # is exactly 1; the KV-cached bf16 sampler's log-probs are within bf16 rounding of them
    assert max(tb_scalars(tmp_path, "policy/ratio_max_abs_dev")) == 0.0
    assert 0.0 < max(tb_scalars(tmp_path, "policy/sampler_logprob_dev")) < 0.1


@pytest.mark.slow
@pytest.mark.parametrize("strategy", ["ddp", "fsdp"])
def test_cca_trains_on_two_processes(tiny_cca, tmp_path, cache_dir, strategy):
    """algorithm=cca: each rank updates on its share of the data pairs, gradients all-reduced once per step (DDP
    replicas stay equal; FSDP2 shards the policy and the frozen reference)."""
    out = tmp_path / strategy
    run_under_torchrun([*tiny_cca, "train.iterations=2", f"hardware={strategy}", *CPU, f"hydra.run.dir={out}"],
                       cwd=tmp_path)
    summary = json.loads((out / "summary.json").read_text())
    assert summary["world_size"] == 2 and math.isfinite(summary["eval_fd_after"])
    if strategy == "ddp":
        assert summary["replica_max_abs_diff"] == 0.0
    trained = weights(out / "checkpoints" / "last.pt", "policy")
    priors = [weights(p) for p in cache_dir.glob("gpt_prior-*.pt")]
    assert priors and all(max((trained[k] - prior[k]).abs().max() for k in trained) > 1e-6 for prior in priors)


@pytest.mark.parametrize("rank", [0, 1])
def test_main_process_first_releases_the_other_ranks_when_rank_0_fails(monkeypatch, rank):
    barriers = []
    monkeypatch.setattr(rlar.runtime.distributed, "rank", lambda: rank)
    monkeypatch.setattr(rlar.runtime.distributed, "barrier", lambda: barriers.append(rank))
    with pytest.raises(ValueError, match="no tokenizer"), rlar.runtime.distributed.main_process_first():
        raise ValueError("no tokenizer")
    assert barriers == [rank]  # rank 0 meets the barrier the others wait at, then raises; they run the body after


FAILING_REWARDS = """
import sys
import torch
from omegaconf import OmegaConf
from rlar.config.store import compose_config
from rlar.contracts import Reward
from rlar.loop import train_rl_loop


class UnscoredInTraining(Reward):
    '''-1 in an evaluation, NaN in training: a reward that fails once the run trains.'''

    def __call__(self, images, targets=None, meta=None):
        return torch.full((len(images),), float("nan") if self.learning else -1.0), {}


class ServersGoneAfterThePrior(Reward):
    '''-1, but NaN in every evaluation once the run trained, reported as a remote reward reports unscored items.'''

    trained, failed = False, 0

    def __call__(self, images, targets=None, meta=None):
        self.trained |= self.learning
        down = self.trained and not self.learning
        self.failed += len(images) if down else 0
        return torch.full((len(images),), float("nan") if down else -1.0), {}

    def metrics(self):
        failed, self.failed = self.failed, 0
        return {"reward/remote_failed_items": float(failed)}


cfg = compose_config(sys.argv[3:])
OmegaConf.set_struct(cfg, False)
cfg.reward = {"_target_": f"__main__.{sys.argv[1]}"}
try:
    train_rl_loop(cfg, sys.argv[2])
except RuntimeError as e:
    print("raised:", str(e).split(";")[0])
"""


@pytest.mark.slow
@pytest.mark.parametrize("reward, error", [
    ("UnscoredInTraining", "iteration 2: no reward was finite"),
    ("ServersGoneAfterThePrior", "the evaluation's reward scored none of its samples")])
def test_a_failure_every_rank_raises_saves_under_torchrun_too(tiny, tmp_path, reward, error):
    """The limit of iterations without a finite reward (counted on the global batch) and an evaluation its reward
    servers scored nothing of (counted on the gathered samples) come on every rank at the same iteration, so the save
    (a collective) is made there, the evaluation pending."""
    proc = torchrun_source(FAILING_REWARDS, tmp_path, reward, str(tmp_path / "run"), *tiny, "hardware=ddp", *CPU,
                           "train.iterations=4", "train.checkpoint_every=100", "eval.every=2",
                           "train.max_nonfinite_iterations=2")
    assert proc.stdout.count(f"raised: {error}") == 2  # on both ranks
    record = torch.load(tmp_path / "run" / "checkpoints" / "last.pt", weights_only=True)
    assert record["iteration"] == 2 and record["summary"]["pending_evaluation"] == 2
    assert len(record["rng"]["sample"]) == 2  # both ranks' streams
