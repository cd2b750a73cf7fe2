"""Shareable policies: rlar-export writes model.safetensors + config.json (of one run, or the weight soup of several);
policy.checkpoint=FOLDER loads them back (gpt, llamagen, arpg), and a folder that is not an export is refused by
name."""

import errno
import json
import re
from dataclasses import asdict
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from hydra.utils import _locate, instantiate
from omegaconf import OmegaConf

from rlar.config.schemas import from_options
from rlar.config.store import compose_config
from rlar.config.validate import check_config
from rlar.export import export_runs, main
from rlar.policy import exported, prior
from rlar.policy.arpg import ARPG
from rlar.policy.exported import write_policy_folder
from rlar.policy.gpt import GPT
from rlar.policy.llamagen import LlamaGen
from rlar.policy.llamagen_build import rope_transformer_arch
from rlar.policy.prior import needs_cached_encoder
from rlar.policy.schemas import POLICY_SCHEMAS
from rlar.text.embedded import EmbeddedTextEncoder

# what the builders read of the tokenizer and the data when they load a checkpoint
TOKENIZER = SimpleNamespace(codebook_size=32, num_tokens=16, grid=(4, 4))
DATA = SimpleNamespace(num_classes=5)
SMALL = {"gpt": ["policy.n_layer=2", "policy.n_head=2", "policy.n_embd=32"],
         "llamagen": ["policy.n_head=2", "policy.dim=32", "policy.multiple_of=32"],
         "arpg": ["policy.n_head=2", "policy.dim=32", "policy.multiple_of=32", "rollout.mode=parallel"]}


def policy_options(kind):
    """The resolved policy config of a tiny ``policy=kind`` (what a run's config holds)."""
    cfg = compose_config([f"policy={kind}", "policy.vocab_size=32", "policy.block_size=16", *SMALL[kind]])
    return OmegaConf.to_container(cfg.policy, resolve=True)


def fresh_policy(kind, options, seed=1):
    """The policy ``options`` describe, with random weights drawn from ``seed``."""
    spec = from_options(POLICY_SCHEMAS[kind], {k: v for k, v in options.items() if k != "_target_"})
    torch.manual_seed(seed)
    if kind == "gpt":
        return GPT(spec.vocab_size, spec.block_size, DATA.num_classes, n_layer=spec.n_layer, n_head=spec.n_head,
                   n_embd=spec.n_embd)
    arch = rope_transformer_arch(spec, TOKENIZER, DATA)
    return LlamaGen(**arch, cls_token_num=spec.cls_token_num) if kind == "llamagen" else ARPG(
        **arch, decoding=asdict(spec.decoding))


def load(options, checkpoint, data=DATA):
    """What ``policy.checkpoint=checkpoint`` builds."""
    settings = {k: v for k, v in options.items() if k != "_target_"}
    return _locate(options["_target_"])(TOKENIZER, data, **{**settings, "checkpoint": str(checkpoint)})


def same_weights(a, b):
    sa, sb = a.state_dict(), b.state_dict()
    return sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


@pytest.mark.parametrize("kind", sorted(SMALL))
def test_exported_folder_loads_back_the_same_weights(tmp_path, kind):
    options = policy_options(kind)
    policy = fresh_policy(kind, options)
    folder = write_policy_folder(policy, {**options, "checkpoint": "/my/run/last.pt"}, tmp_path / "export")
    assert sorted(p.name for p in folder.iterdir()) == ["config.json", "model.safetensors"]
    config = json.loads((folder / "config.json").read_text())
    assert {k: config[k] for k in ("vocab_size", "block_size", "num_classes")} == {
        "vocab_size": 32, "block_size": 16, "num_classes": 5}
    assert config["policy"] == {k: v for k, v in options.items() if k not in ("checkpoint", "cache_dir")}
    loaded = load(options, folder)
    assert type(loaded) is type(policy) and same_weights(loaded, policy)
    assert not same_weights(loaded, fresh_policy(kind, options, seed=2))


def test_a_folder_that_is_not_an_export_is_refused(tmp_path):
    options = policy_options("gpt")
    folder = write_policy_folder(fresh_policy("gpt", options), options, tmp_path / "export")
    (folder / "model.safetensors").unlink()
    with pytest.raises(FileNotFoundError, match=r"is a folder without model\.safetensors; an exported policy"):
        load(options, folder)
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(FileNotFoundError, match="without model.safetensors and config.json"):
        load(options, empty)



def test_an_export_stopped_over_an_older_one_is_refused_not_read_half_old(tmp_path, monkeypatch):
    options = policy_options("gpt")
    folder = write_policy_folder(fresh_policy("gpt", options), options, tmp_path / "export")
    old_weights = (folder / "model.safetensors").read_bytes()

    def stopped(tensors, path, metadata=None):  # half the new weights written, then the disk is full
        Path(path).write_bytes(b"half")
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(exported, "save_file", stopped)
    with pytest.raises(OSError):
        write_policy_folder(fresh_policy("gpt", options, seed=2), options, folder)
    assert sorted(p.name for p in folder.iterdir()) == ["model.safetensors"]  # no config, no temporary file
    assert (folder / "model.safetensors").read_bytes() == old_weights
    with pytest.raises(FileNotFoundError, match="is a folder without config.json"):
        load(options, folder)

def test_an_export_for_another_architecture_is_refused(tmp_path):
    options = policy_options("llamagen")
    folder = write_policy_folder(fresh_policy("llamagen", options), options, tmp_path / "export")
    with pytest.raises(ValueError, match="exported with num_classes=5, but the configured policy has num_classes=7"):
        load(options, folder, data=SimpleNamespace(num_classes=7))



def test_an_export_of_another_policy_class_is_refused_naming_both(tmp_path):
    """A GPT's folder given to policy=llamagen of the same vocabulary, length and classes: the class says it, not a
    list of every key."""
    options = policy_options("gpt")
    folder = write_policy_folder(fresh_policy("gpt", options), options, tmp_path / "export")
    with pytest.raises(ValueError, match="holds a GPT policy, but the configured policy is a LlamaGen; choose the "
                                         "policy it was exported from .*rlar.policy.prior.build_gpt"):
        load(policy_options("llamagen"), folder)


@pytest.mark.parametrize("kind", sorted(SMALL))
def test_a_sharded_run_s_last_pt_is_refused_naming_the_files_that_hold_its_weights(tmp_path, kind):
    torch.save({"format": "sharded", "shards": "last_sharded.2", "iteration": 2, "summary": {}},
               tmp_path / "last.pt")  # the loop's record alone
    with pytest.raises(ValueError, match=r"a sharded run's last.pt.* give checkpoints/policy.pt \(or ema.pt"):
        load(policy_options(kind), tmp_path / "last.pt")


def test_a_soup_of_runs_that_read_other_text_encoders_is_refused(tmp_path):
    """Their priors were pretrained with their own encoder (its settings key the prior): not one prior."""
    runs = []
    for name, extra in (("a", []), ("b", ["text_encoder.n_layer=1"])):
        run = tmp_path / name
        (run / ".hydra").mkdir(parents=True)
        OmegaConf.save(compose_config(["text_encoder=embedded", "data.captions=attributes", *extra]),
                       run / ".hydra" / "config.yaml")
        runs.append(run)
    with pytest.raises(ValueError, match=re.escape(f"{runs[1]} has another text_encoder config than {runs[0]}")):
        export_runs(runs, tmp_path / "soup")

def saved_run(root, cfg, seed, ema_seed=None):
    """A run directory as rlar-run leaves it (.hydra/config.yaml, checkpoints/last.pt), without training: a GPT of
    ``cfg`` drawn from ``seed`` (and its average from ``ema_seed``); returns ``(run_dir, the evaluated policy)``."""
    run = root / f"seed{seed}"
    (run / ".hydra").mkdir(parents=True)
    OmegaConf.save(cfg, run / ".hydra" / "config.yaml")
    data = instantiate(cfg.data)
    tokenizer = instantiate(cfg.tokenizer, data=data)
    policies = {}
    for name, drawn_from in (("policy", seed), ("ema", ema_seed)):
        if drawn_from is not None:
            torch.manual_seed(drawn_from)
            policies[name] = GPT(tokenizer.codebook_size, tokenizer.num_tokens, data.num_classes,
                                 n_layer=cfg.policy.n_layer, n_head=cfg.policy.n_head, n_embd=cfg.policy.n_embd)
    (run / "checkpoints").mkdir()
    torch.save({**{k: v.state_dict() for k, v in policies.items()}, "format": "consolidated", "iteration": 2},
               run / "checkpoints" / "last.pt")
    return run, policies.get("ema", policies["policy"])


@pytest.mark.slow
def test_rlar_export_of_a_run_directory(tmp_path, tiny, capsys):
    """The folder holds the checkpoint's policy, and policy.checkpoint=FOLDER passes the config checks and loads
    it."""
    cfg = compose_config(tiny)
    run, policy = saved_run(tmp_path / "outputs", cfg, seed=3)
    data = instantiate(cfg.data)
    tokenizer = instantiate(cfg.tokenizer, data=data)
    out = tmp_path / "shared"
    main([str(run), str(out)])
    assert f"policy.checkpoint={out}" in capsys.readouterr().out
    assert "soup" not in json.loads((out / "config.json").read_text())
    check_config(compose_config([*tiny, f"policy.checkpoint={out}"]))
    loaded = instantiate(cfg.policy, checkpoint=str(out), tokenizer=tokenizer, data=data)
    assert same_weights(loaded, policy)
    (run / "checkpoints" / "last.pt").unlink()
    with pytest.raises(FileNotFoundError, match="no checkpoints/last.pt"):
        export_runs([run], tmp_path / "again")


def test_exporting_one_run_builds_its_policy_from_the_run_not_the_prior(tmp_path, tiny, monkeypatch):
    """A run whose prior came from the cache (``policy.checkpoint`` null): the export reads the run's weights only, so
    a prior missing from this machine's cache is not pretrained again."""
    cfg = compose_config([*tiny, "policy.pretrain.steps=39"])  # a prior no cache holds
    run, policy = saved_run(tmp_path / "outputs", cfg, seed=3)

    def pretrained(*args, **kwargs):
        raise AssertionError("the export pretrained the prior")

    monkeypatch.setattr(prior, "pretrain_gpt", pretrained)
    out = export_runs([run], tmp_path / "shared")
    data = instantiate(cfg.data)
    tokenizer = instantiate(cfg.tokenizer, data=data)
    assert same_weights(instantiate(cfg.policy, checkpoint=str(out), tokenizer=tokenizer, data=data), policy)


@pytest.mark.slow
def test_rlar_export_of_several_runs_writes_their_soup_toward_the_prior(tmp_path, tiny):
    """Two runs of one prior (one kept an average, which is what it evaluated): ``--weight 0.5`` writes
    prior + 0.5 * (average of the two - prior), tensor by tensor, with its recipe in config.json; a run of another
    policy config is refused by name."""
    cfg = compose_config(tiny)
    (a, policy_a), (b, policy_b) = saved_run(tmp_path, cfg, seed=3), saved_run(tmp_path, cfg, seed=4, ema_seed=5)
    data = instantiate(cfg.data)
    tokenizer = instantiate(cfg.tokenizer, data=data)
    prior = instantiate(cfg.policy, tokenizer=tokenizer, data=data).state_dict()  # the cached prior
    out = tmp_path / "soup"
    main([str(a), str(b), str(out), "--weight", "0.5"])
    soup = instantiate(cfg.policy, checkpoint=str(out), tokenizer=tokenizer, data=data).state_dict()
    for key, value in prior.items():
        mean = (policy_a.state_dict()[key].double() + policy_b.state_dict()[key].double()) / 2
        assert torch.equal(soup[key], (value.double() + 0.5 * (mean - value.double())).float()), key
    assert not torch.equal(soup["head.weight"], prior["head.weight"])
    recipe = json.loads((out / "config.json").read_text())["soup"]
    assert recipe == {"runs": [str(a.resolve()), str(b.resolve())], "weight": 0.5}
    other = compose_config([*tiny, "policy.n_embd=64"])
    c, _ = saved_run(tmp_path / "other", other, seed=6)
    with pytest.raises(ValueError, match=re.escape(f"{c} has another policy config than {a}: a soup averages runs")):
        export_runs([a, c], tmp_path / "refused")


@pytest.mark.parametrize("kind", ["gpt", "llamagen"])
def test_an_export_carries_the_embedded_text_encoder_its_policy_reads(tmp_path, kind):
    """The encoder trained with the prior travels with the policy: loading the folder needs no cache entry."""
    options = {**policy_options(kind), "cache_dir": str(tmp_path / "empty-cache")}  # no prior, no encoder there
    torch.manual_seed(3)
    encoder = EmbeddedTextEncoder(max_length=4, width=16, n_layer=1, n_head=2)
    spec = from_options(POLICY_SCHEMAS[kind], {k: v for k, v in options.items() if k != "_target_"})
    torch.manual_seed(1)
    if kind == "gpt":
        policy = GPT(32, 16, DATA.num_classes, n_layer=spec.n_layer, n_head=spec.n_head, n_embd=spec.n_embd,
                     caption_dim=16, condition_tokens=4)
    else:
        policy = LlamaGen(**rope_transformer_arch(spec, TOKENIZER, DATA), cls_token_num=4, caption_dim=16)
    folder = write_policy_folder(policy, options, tmp_path / "export", text_encoder=encoder)
    assert sorted(p.name for p in folder.iterdir()) == ["config.json", "model.safetensors", "text_encoder.safetensors"]
    assert json.loads((folder / "config.json").read_text())["text_encoder"] == encoder.spec()
    torch.manual_seed(4)
    fresh = EmbeddedTextEncoder(max_length=4, width=16, n_layer=1, n_head=2)
    settings = {k: v for k, v in options.items() if k != "_target_"}
    build = _locate(options["_target_"])
    loaded = build(TOKENIZER, DATA, fresh, **{**settings, "checkpoint": str(folder)})
    assert same_weights(loaded, policy) and same_weights(fresh, encoder)
    assert not fresh.training and not any(p.requires_grad for p in fresh.parameters())  # frozen for RL
    other = EmbeddedTextEncoder(vocabulary=("zero", "one"), max_length=4, width=16, n_layer=1, n_head=2)
    with pytest.raises(ValueError, match="carries a text encoder defined as .* set the text_encoder options"):
        build(TOKENIZER, DATA, other, **{**settings, "checkpoint": str(folder)})
    assert not needs_cached_encoder(str(folder), fresh)
    (folder / "text_encoder.safetensors").unlink()  # an export without it: the encoder comes from the prior's cache
    assert needs_cached_encoder(str(folder), fresh) and needs_cached_encoder(str(folder / "model.safetensors"), fresh)


def test_an_export_over_one_that_carried_a_text_encoder_leaves_none_behind(tmp_path):
    captioned = GPT(32, 16, DATA.num_classes, n_layer=1, n_head=2, n_embd=32, caption_dim=16, condition_tokens=4)
    encoder = EmbeddedTextEncoder(max_length=4, width=16, n_layer=1, n_head=2)
    options = policy_options("gpt")
    folder = write_policy_folder(captioned, options, tmp_path / "export", text_encoder=encoder)
    write_policy_folder(fresh_policy("gpt", options), options, folder)  # a class-conditional run, the same folder
    assert sorted(p.name for p in folder.iterdir()) == ["config.json", "model.safetensors"]
    assert same_weights(load(options, folder), fresh_policy("gpt", options))


@pytest.mark.parametrize("weight", ["nan", "inf"])
def test_rlar_export_refuses_a_soup_weight_that_is_not_finite_before_reading_any_run(tmp_path, capsys, weight):
    with pytest.raises(SystemExit):
        main([str(tmp_path / "no_run"), str(tmp_path / "no_run_either"), str(tmp_path / "out"), "--weight", weight])
    assert f"--weight {weight}: a soup's weight is a finite number" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()
