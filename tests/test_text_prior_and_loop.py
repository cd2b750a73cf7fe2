"""Captions as the conditions of data items: the seam that turns a batch's captions into conditions, the
text-conditioned prior trained with the embedded text encoder (and cached with it), and the RL loop end to end on
the digits with their attribute captions (data.captions=attributes)."""

import json

import pytest
import torch
from hydra.utils import instantiate
from torchrun import torchrun

from rlar.config.store import compose_config
from rlar.data.digits import DigitsData
from rlar.export import export_runs
from rlar.loop import train_rl_loop
from rlar.policy.gpt import GPT
from rlar.policy.prior import build_gpt_prior, teacher_forced_ce
from rlar.runtime.ema import exported_policy
from rlar.text.build import build_text_encoder
from rlar.text.conditions import item_conditions
from rlar.text.embedded import EmbeddedTextEncoder

WORDS = ["zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine"]

@pytest.fixture(scope="module")
def captioned():
    return DigitsData(image_size=16, captions="attributes")  # "a thick seven leaning right"


def test_item_conditions_read_the_captions_of_the_batch(captioned):
    torch.manual_seed(0)
    encoder = EmbeddedTextEncoder(max_length=6, width=16, n_layer=1, n_head=2).eval()
    indices = torch.tensor([5, 0, 5])
    labels, captions = captioned.train_labels[indices], captioned.captions_of(indices)
    assert captions[0] == captioned.train_captions[5] and captions[0].split()[2] in WORDS
    condition = item_conditions(encoder, labels, captions, "cpu")
    with torch.no_grad():
        expected, mask = encoder.encode(captions)
    assert torch.allclose(condition.text, expected, atol=1e-6) and torch.equal(condition.mask, mask)
    assert torch.equal(condition.labels, labels) and not condition.null.any() and not condition.text.requires_grad
    assert torch.equal(condition.text[0], condition.text[2])  # the same caption, the same features
    assert item_conditions(None, labels, captions, "cpu").labels.tolist() == labels.tolist()
    with pytest.raises(ValueError, match="text_encoder is set but the data has no captions"):
        item_conditions(encoder, labels, DigitsData(image_size=16).captions_of(indices), "cpu")


def tokenizer_for(data, cache_dir):
    cfg = compose_config([f"cache_dir={cache_dir}", "tokenizer.train.steps=40", "data.image_size=16"])
    return instantiate(cfg.tokenizer, data=data)


@pytest.mark.slow
def test_the_text_prior_learns_from_its_captions_and_is_cached_with_its_encoder(captioned, cache_dir, monkeypatch):
    tokenizer = tokenizer_for(captioned, cache_dir)
    torch.manual_seed(0)
    encoder = EmbeddedTextEncoder(max_length=6, width=32, n_layer=1, n_head=2)
    options = {"vocab_size": tokenizer.codebook_size, "n_layer": 2, "n_head": 2, "n_embd": 64, "cache_dir": cache_dir,
               "pretrain": {"steps": 300, "batch_size": 64, "lr": 3e-3}}
    policy = build_gpt_prior(tokenizer, captioned, encoder, **options)
    assert isinstance(policy, GPT) and policy.caption_dim == 32 and policy.cond_len == 6
    assert not any(p.requires_grad for p in encoder.parameters()) and not encoder.training  # frozen for RL
    codes = tokenizer.encode_indices(captioned.eval_images)
    with torch.no_grad():
        right = teacher_forced_ce(policy, codes, encoder.condition(captioned.eval_captions))
        shuffled = [captioned.eval_captions[i] for i in torch.randperm(len(codes), generator=torch.Generator()
                                                                      .manual_seed(0)).tolist()]
        wrong = teacher_forced_ce(policy, codes, encoder.condition(shuffled))
        null = teacher_forced_ce(policy, codes, encoder.condition(captioned.eval_captions).null_like())
    print(f"eval CE: captions {float(right):.3f}, shuffled {float(wrong):.3f}, null {float(null):.3f}")
    assert right < wrong - 0.05 and right < null - 0.05  # the captions carry what the images show
    # the session's cache holds other priors too: this one's entry is the one keyed by a text encoder
    specs = [json.loads(p.read_text())["spec"] for p in cache_dir.glob("gpt_prior-*.json")]
    (text,) = [spec["text"] for spec in specs if "text" in spec]
    assert text["encoder"]["class"] == "embedded"
    monkeypatch.setattr("rlar.policy.prior.pretrain_gpt", None)  # a second build must not train
    torch.manual_seed(1)
    fresh = EmbeddedTextEncoder(max_length=6, width=32, n_layer=1, n_head=2)
    again = build_gpt_prior(tokenizer, captioned, fresh, **options)
    assert all(torch.equal(a, b) for a, b in zip(encoder.state_dict().values(), fresh.state_dict().values(),
                                                 strict=True))
    assert all(torch.equal(policy.state_dict()[k], v) for k, v in again.state_dict().items())
    torch.save({"policy": again.state_dict()}, cache_dir / "text_policy.pt")  # an RL checkpoint's layout
    torch.manual_seed(2)
    third = EmbeddedTextEncoder(max_length=6, width=32, n_layer=1, n_head=2)
    loaded = build_gpt_prior(tokenizer, captioned, third, **options, checkpoint=str(cache_dir / "text_policy.pt"))
    assert all(torch.equal(a, b) for a, b in zip(encoder.state_dict().values(), third.state_dict().values(),
                                                 strict=True))  # a checkpoint gets the encoder of its prior
    assert torch.equal(loaded.caption.uncond_embedding, policy.caption.uncond_embedding)
    other = {**options, "pretrain": {**options["pretrain"], "steps": 301}}  # settings whose prior is not cached
    with pytest.raises(FileNotFoundError, match="reads the embedded text encoder of the prior it was fine-tuned "
                                                "from.*settings of the run that made the checkpoint"):
        build_gpt_prior(tokenizer, captioned, EmbeddedTextEncoder(max_length=6, width=32, n_layer=1, n_head=2),
                        **other, checkpoint=str(cache_dir / "text_policy.pt"))  # nothing is pretrained


@pytest.mark.slow
@pytest.mark.parametrize("policy", [["policy.condition_mode=prefix"], ["policy.condition_mode=cross_attention"],
                                    ["policy=llamagen", "policy.dim=32", "policy.n_head=2"]],
                         ids=["gpt-prefix", "gpt-cross-attention", "llamagen-t2i"])
def test_the_loop_fine_tunes_a_text_conditioned_prior_with_guidance(tiny, tmp_path, tb_scalars, policy):
    overrides = [*tiny, "data.captions=attributes", "data.image_size=16",
                 "text_encoder=embedded", "text_encoder.max_length=6", "text_encoder.width=32",
                 "text_encoder.n_layer=1", "text_encoder.n_head=2", *policy, "rollout.cfg_scale=2.0",
                 "rollout.label_dropout=0.2", "train.warmup_steps=1", "hardware.num_threads=1"]
    cfg = compose_config(overrides)
    summary = train_rl_loop(cfg, tmp_path)
    assert summary["iterations"] == 2 and summary["eval_reward_after"] == summary["eval_reward_after"]  # not NaN
    assert max(tb_scalars(tmp_path, "policy/ratio_max_abs_dev")) <= 1e-5
    assert (tmp_path / "checkpoints" / "last.pt").is_file()
    shared = export_runs([tmp_path], tmp_path / "shared")  # the run's config, recorded by train_rl_loop
    data = instantiate(cfg.data)
    tokenizer = instantiate(cfg.tokenizer, data=data)
    from_cache, from_folder = build_text_encoder(cfg), build_text_encoder(cfg)
    instantiate(cfg.policy, tokenizer=tokenizer, data=data, text_encoder=from_cache,
                checkpoint=str(tmp_path / "checkpoints" / "last.pt"))  # the encoder from its prior's cache entry
    elsewhere = {"pretrain": {**cfg.policy.pretrain, "steps": cfg.policy.pretrain.steps + 1}}  # no prior cached
    shared_policy = instantiate(cfg.policy, tokenizer=tokenizer, data=data, text_encoder=from_folder,
                                checkpoint=str(shared), **elsewhere)
    evaluated = exported_policy(tmp_path / "checkpoints")  # the run's moving average, which its evaluations sampled
    assert all(torch.equal(v, evaluated[k]) for k, v in shared_policy.state_dict().items())
    assert all(torch.equal(x, y) for x, y in zip(from_cache.state_dict().values(), from_folder.state_dict().values(),
                                                 strict=True))
    # a run fine-tuned from the shared folder, with no prior cached for its settings, exports with its encoder too
    again = compose_config([*overrides, f"policy.checkpoint={shared}",
                            f"policy.pretrain.steps={cfg.policy.pretrain.steps + 1}", "train.iterations=1"])
    train_rl_loop(again, tmp_path / "again")
    assert (export_runs([tmp_path / "again"], tmp_path / "shared_again") / "text_encoder.safetensors").is_file()
    # the folder carries the encoder, so prompts without images can fine-tune it: nothing is read from a cache
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("".join(f"a thin {d} leaning left\n" for d in ("zero", "one", "seven", "eight") * 3))
    kept = [o for o in overrides if o not in ("data.captions=attributes", "train.warmup_steps=1")]  # images only
    on_prompts = compose_config([*kept, "data=prompts", f"data.path={prompts}",
                                 f"cache_dir={tmp_path / 'empty-cache'}", f"tokenizer.checkpoint={tokenizer.source}",
                                 f"policy.checkpoint={shared}", "reward=compositional",
                                 "reward.classifier.train.steps=20",
                                 "reward.data={_target_:rlar.data.digits.DigitsData,image_size:16}",
                                 "eval.classifier=false", "algorithm.ntp_weight=0", "train.iterations=1"])
    assert train_rl_loop(on_prompts, tmp_path / "on_prompts")["iterations"] == 1


@pytest.mark.slow
def test_ddp_and_fsdp_runs_with_text_conditions_compute_the_same(tiny, tmp_path):
    text = ["data.captions=attributes", "data.image_size=16", "text_encoder=embedded",
            "text_encoder.max_length=6", "text_encoder.width=32", "text_encoder.n_layer=1", "text_encoder.n_head=2",
            "rollout.cfg_scale=2.0", "algorithm.grad_accum=2", "train.iterations=3", "eval.every=3",
            "hardware.device=cpu", "hardware.precision=fp32"]
    for strategy, fmt in (("ddp", "consolidated"), ("fsdp", "sharded")):
        torchrun(["-m", "rlar.run", *tiny, *text, f"hardware={strategy}", f"train.checkpoint_format={fmt}",
                  f"hydra.run.dir={tmp_path / strategy}"], cwd=tmp_path)
    assert json.loads((tmp_path / "ddp" / "summary.json").read_text())["replica_max_abs_diff"] == 0.0
    ddp = torch.load(tmp_path / "ddp" / "checkpoints" / "last.pt", weights_only=True)["policy"]
    fsdp = torch.load(tmp_path / "fsdp" / "checkpoints" / "policy.pt", weights_only=True)
    assert "caption.uncond_embedding" in ddp
    assert max(float((ddp[k] - fsdp[k]).abs().max()) for k in ddp) < 1e-5
