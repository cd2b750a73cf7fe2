"""A cached artifact depends only on its key: the embedded tokenizer and prior trained after different global
random states (another hardware.seed, another command such as rlar-prepare) are the same weights, and building
them leaves the caller's random state as it was."""

import json
import shutil

import pytest
import torch
from hydra.utils import instantiate

import rlar.policy.prior
from rlar.config.store import compose_config
from rlar.runtime.cache import BUILD_THREADS, cached_artifact, seeded, source_key, spec_key

SHORT = ["tokenizer.train.steps=3", "policy.pretrain.steps=2", "policy.pretrain.batch_size=8"]


def build_tokenizer_and_prior(cache_dir, global_seed: int):
    cfg = compose_config([f"cache_dir={cache_dir}", *SHORT])
    torch.manual_seed(global_seed)
    data = instantiate(cfg.data)
    tokenizer = instantiate(cfg.tokenizer, data=data)
    before = torch.get_rng_state()
    policy = instantiate(cfg.policy, tokenizer=tokenizer, data=data, text_encoder=None)
    assert torch.equal(before, torch.get_rng_state())  # the caller's random state is untouched
    return tokenizer.vq.state_dict(), policy.state_dict()


@pytest.mark.slow  # trains a tokenizer and a prior (a few steps each)
def test_the_cache_holds_the_same_weights_whatever_the_global_random_state(tmp_path):
    first = build_tokenizer_and_prior(tmp_path / "a", global_seed=0)
    second = build_tokenizer_and_prior(tmp_path / "b", global_seed=123)
    for one, other in zip(first, second, strict=True):
        assert one.keys() == other.keys()
        assert all(torch.equal(one[k], other[k]) for k in one)


@pytest.mark.slow  # pretrains two priors (a few steps each)
def test_a_prior_pretrained_with_dropout_is_its_own_cache_entry(tmp_path):
    """policy.dropout changes what pretraining learns, so it keys the cached prior (the default 0 stays out of the
    key, which keeps the entries cached before it): a dropout run never loads a prior pretrained without it."""
    for dropout in (0.0, 0.3):
        cfg = compose_config([f"cache_dir={tmp_path}", *SHORT, f"policy.dropout={dropout}"])
        data = instantiate(cfg.data)
        instantiate(cfg.policy, tokenizer=instantiate(cfg.tokenizer, data=data), data=data, text_encoder=None)
    specs = [json.loads(p.read_text())["spec"]["arch"] for p in sorted(tmp_path.glob("gpt_prior-*.json"))]
    assert sorted(spec.get("dropout", 0.0) for spec in specs) == [0.0, 0.3]
    assert all("dropout" not in spec for spec in specs if spec.get("dropout", 0.0) == 0.0)


@pytest.mark.slow  # trains a tokenizer and a prior twice (a few steps each)
def test_the_cache_holds_the_same_weights_whatever_the_runs_thread_count(tmp_path):
    """Thread counts split floating-point sums differently; without a fixed build count even three steps end in
    other weights (measured), so a cache would depend on the hardware.num_threads of whichever run built it."""
    before = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        one_thread = build_tokenizer_and_prior(tmp_path / "a", global_seed=0)
        torch.set_num_threads(3)
        three_threads = build_tokenizer_and_prior(tmp_path / "b", global_seed=0)
        assert torch.get_num_threads() == 3  # the run's own count is back after the build
    finally:
        torch.set_num_threads(before)
    for one, other in zip(one_thread, three_threads, strict=True):
        assert all(torch.equal(one[k], other[k]) for k in one)


@pytest.mark.parametrize("setting, expected", [(None, 2), ("1", 1), ("3", 3)])
def test_a_cache_build_runs_on_its_own_thread_count_and_restores_the_callers(tmp_path, monkeypatch, setting,
                                                                              expected):
    assert BUILD_THREADS == 2  # the count the docs' caches were built on
    if setting is None:
        monkeypatch.delenv("RLAR_BUILD_THREADS", raising=False)
    else:
        monkeypatch.setenv("RLAR_BUILD_THREADS", setting)
    seen = []

    def build(checkpoint):
        seen.append(torch.get_num_threads())
        return {"w": torch.zeros(1)}, {}

    def failing_build(checkpoint):
        seen.append(torch.get_num_threads())
        raise RuntimeError("out of memory")

    before = torch.get_num_threads()
    try:
        torch.set_num_threads(5)
        _, path = cached_artifact(tmp_path, "probe", {"n": 1}, build)
        with pytest.raises(RuntimeError, match="out of memory"):
            cached_artifact(tmp_path, "probe", {"n": 2}, failing_build)
        assert torch.get_num_threads() == 5
    finally:
        torch.set_num_threads(before)
    assert seen == [expected, expected]
    # the default count keeps the spec (and the entries built before it); another count keys entries of its own
    default_path = tmp_path / f"probe-{spec_key({'n': 1})}.pt"
    assert (path == default_path) == (expected == BUILD_THREADS)
    recorded = json.loads(path.with_suffix(".json").read_text())["spec"]
    assert recorded == ({"n": 1} if expected == BUILD_THREADS else {"n": 1, "build_threads": expected})


@pytest.mark.parametrize("setting", ["0", "two", "-1", ""])
def test_a_bad_build_thread_count_is_refused_with_the_fix_named(tmp_path, monkeypatch, setting):
    monkeypatch.setenv("RLAR_BUILD_THREADS", setting)
    with pytest.raises(ValueError, match=r"RLAR_BUILD_THREADS=.*unset it"):
        cached_artifact(tmp_path, "probe", {"n": 1}, lambda checkpoint: ({}, {}))
    assert not list(tmp_path.iterdir())  # nothing built, nothing written


def test_a_cache_copied_elsewhere_keeps_its_keys(tmp_path, monkeypatch):
    """The prior's key names its tokenizer by the cache file's name, not its path: a cache copied to another
    machine (another home) or mounted at another path is read, not trained again."""
    build_tokenizer_and_prior(tmp_path / "here", global_seed=0)
    shutil.copytree(tmp_path / "here", tmp_path / "there")

    def no_training(*args, **kwargs):
        raise AssertionError("the copied cache was not found: the prior was pretrained again")

    monkeypatch.setattr(rlar.policy.prior, "pretrain_gpt", no_training)
    monkeypatch.setattr("rlar.tokenizer.build.train_digits_vq", no_training)
    copied = build_tokenizer_and_prior(tmp_path / "there", global_seed=0)
    original = torch.load(next((tmp_path / "here").glob("gpt_prior-*.pt")), weights_only=True)
    assert all(torch.equal(original[k], copied[1][k]) for k in original)
    assert sorted(p.name for p in (tmp_path / "there").iterdir()) == sorted(
        p.name for p in (tmp_path / "here").iterdir())  # nothing new was written


def test_a_tokenizer_in_the_cache_is_keyed_by_its_name_one_naming_no_file_as_given(tmp_path):
    """(A checkpoint file is keyed by its content: ``tests/test_cache_keys_content.py``.)"""
    assert source_key(str(tmp_path / "cache" / "digits_vq-0123456789ab.pt"), tmp_path / "cache") == \
        "digits_vq-0123456789ab.pt"
    missing = str(tmp_path / "checkpoints" / "vq.pt")
    assert source_key(missing, tmp_path / "cache") == missing


def test_seeded_seeds_the_cpu_alone_and_restores_it(monkeypatch):
    """A build seeds the CPU's generator (where it runs); the GPUs' generators, which ``torch.manual_seed`` would
    reseed for good, are left to the run (its dropout)."""
    torch.manual_seed(7)
    before, reseeded = torch.get_rng_state(), []
    monkeypatch.setattr(torch.cuda, "manual_seed_all", reseeded.append)
    with seeded(5):
        inside = torch.rand(3)
    assert torch.equal(inside, torch.rand(3, generator=torch.Generator().manual_seed(5)))
    assert torch.equal(torch.get_rng_state(), before) and reseeded == []
