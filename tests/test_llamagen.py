import argparse
import math

import pytest
import torch
from hydra.errors import ConfigCompositionException
from hydra.utils import instantiate

from rlar.config.store import compose_config
from rlar.data.digits import DigitsData
from rlar.policy.arpg import ARPG
from rlar.policy.llamagen import PRESETS, LlamaGen, apply_rope, load_llamagen_state, rope_2d
from rlar.policy.llamagen_build import build_llamagen_prior
from rlar.rollout.sampling import compute_sequence_logprob, sample_codes_with_logprobs

V, T, C = 32, 16, 5  # vocabulary, image tokens (a 4x4 grid), classes


@pytest.fixture
def model():
    torch.manual_seed(0)
    m = LlamaGen(V, T, C, n_layer=2, n_head=2, dim=32, multiple_of=32).eval()
    torch.nn.init.normal_(m.output.weight, std=0.1)  # LlamaGen zero-inits it: logits would be constant
    return m


def public_state(vocab=16, classes=3, n_layer=2, dim=32, hidden=96) -> dict:
    """The key names and shapes of LlamaGen's c2i ``Transformer.state_dict()`` (no freqs_cis: not a buffer)."""
    state = {"cls_embedding.embedding_table.weight": (classes + 1, dim), "tok_embeddings.weight": (vocab, dim),
             "norm.weight": (dim,), "output.weight": (vocab, dim)}
    for i in range(n_layer):
        state |= {f"layers.{i}.attention.wqkv.weight": (3 * dim, dim), f"layers.{i}.attention.wo.weight": (dim, dim),
                  f"layers.{i}.feed_forward.w1.weight": (hidden, dim),
                  f"layers.{i}.feed_forward.w3.weight": (hidden, dim),
                  f"layers.{i}.feed_forward.w2.weight": (dim, hidden),
                  f"layers.{i}.attention_norm.weight": (dim,), f"layers.{i}.ffn_norm.weight": (dim,)}
    return {k: torch.randn(shape) for k, shape in state.items()}


def small():  # hidden: int(2 * 4 * 32 / 3) = 85, rounded up to a multiple of 32 = 96
    return LlamaGen(16, 16, 3, n_layer=2, n_head=2, dim=32, multiple_of=32)


def test_public_state_dict_loads_strictly():
    state = public_state()
    m = load_llamagen_state(small(), state)
    assert torch.equal(m.output.weight, state["output.weight"])
    assert torch.equal(m.head(torch.eye(32)), state["output.weight"].T)
    assert "freqs_cis" not in m.state_dict()


def test_renamed_key_is_listed():
    state = public_state()
    state["head.weight"] = state.pop("output.weight")
    with pytest.raises(ValueError, match=r"missing: output.weight\n  unexpected: head.weight"):
        load_llamagen_state(small(), state)


def test_wrong_shape_is_listed():
    state = public_state()
    state["tok_embeddings.weight"] = torch.zeros(17, 32)
    with pytest.raises(ValueError, match=r"shape: tok_embeddings.weight: file \(17, 32\) vs model \(16, 32\)"):
        load_llamagen_state(small(), state)


@pytest.mark.parametrize("wrapper", ["model", "module", "state_dict", None])
def test_checkpoint_wrappers_load(tmp_path, wrapper):
    state = public_state()
    if wrapper is None:  # FSDP's consolidated.pth: the bare dict (a stray freqs_cis is ignored)
        checkpoint = {**state, "freqs_cis": torch.zeros(17, 8, 2)}
    else:  # train_c2i.py also saves the optimizer, the step and its argparse args
        checkpoint = {wrapper: state, "steps": 10, "args": argparse.Namespace(gpt_model="GPT-B", lr=1e-4)}
    torch.save(checkpoint, tmp_path / "c2i.pt")
    m = load_llamagen_state(small(), tmp_path / "c2i.pt")
    assert torch.equal(m.tok_embeddings.weight, state["tok_embeddings.weight"])


def test_rope_2d_table_by_hand():
    # head_dim 8: frequencies base ** (-4i / 8) = (1, 0.01); pairs 0-1 turn with the row, pairs 2-3 with the column
    table = rope_2d(grid=2, head_dim=8, base=10000.0, cls_token_num=1)
    assert table.shape == (5, 4, 2)
    assert (table[0] == 0).all()  # the class token: zeros, not the identity
    angles = torch.tensor([[0.0, 0.0, 0.0, 0.0],   # token 0: row 0, col 0
                           [0.0, 0.0, 1.0, 0.01],  # token 1: row 0, col 1
                           [1.0, 0.01, 0.0, 0.0],  # token 2: row 1, col 0
                           [1.0, 0.01, 1.0, 0.01]])  # token 3: row 1, col 1
    assert torch.allclose(table[1:], torch.stack([angles.cos(), angles.sin()], -1), atol=1e-6)


def test_rope_rotates_adjacent_pairs_and_zeroes_the_class_token():
    table = rope_2d(grid=2, head_dim=8)
    x = torch.zeros(1, 5, 1, 8)
    x[..., 2] = 1.0  # the first element of pair 1
    y = apply_rope(x, table)[0, :, 0]  # [5, 8]
    assert (y[0] == 0).all()  # class token: query and key vanish
    expected = torch.zeros(8)
    expected[2:4] = torch.tensor([math.cos(0.01), math.sin(0.01)])  # token 2 (row 1): pair 1 turns by 0.01
    assert torch.allclose(y[3], expected, atol=1e-6)
    assert torch.allclose(y[2], x[0, 2, 0])  # token 1 (row 0): pair 1 does not turn


def test_null_class_row(model):
    assert model.cls_embedding.embedding_table.weight.shape == (C + 1, 32)
    assert model.null_class == C
    assert model.class_ids(torch.tensor([2, -1]), 2, "cpu").tolist() == [2, C]
    tokens = torch.randint(0, V, (2, T))
    null = model.hidden_states(tokens, torch.tensor([C, C]))
    assert torch.equal(model.hidden_states(tokens, torch.tensor([-1, -1])), null)
    assert torch.equal(model.hidden_states(tokens, None), null)


def test_logits_t_predict_token_t(model):
    tokens = torch.randint(0, V, (1, T))
    labels = torch.tensor([1])
    base = model(tokens, labels)
    assert base.shape == (1, T, V)
    for t in (0, 5, T - 1):
        changed = tokens.clone()
        changed[0, t] = (changed[0, t] + 1) % V
        diff = (model(changed, labels) - base).abs().amax(-1)[0]  # [T]
        assert (diff[: t + 1] == 0).all() and (diff[t + 1 :] > 0).all()
    other = torch.randint(0, V, (1, T))
    assert torch.equal(model(other, labels)[:, 0], base[:, 0])  # position 0 sees only the class
    assert not torch.allclose(model(tokens, torch.tensor([2]))[:, 0], base[:, 0])


REFERENCE_SIZES = {"GPT-B": 111e6, "GPT-L": 343e6, "GPT-XL": 775e6, "GPT-XXL": 1.4e9, "GPT-XXXL": 3.9e9,
                   "GPT-1B": 1.2e9, "GPT-3B": 3.1e9, "GPT-7B": 6.6e9}  # LlamaGen's comments (16384 codes, 1000 classes)


@pytest.mark.parametrize("size", list(PRESETS))
def test_presets_have_the_reference_sizes(size):
    with torch.device("meta"):
        m = LlamaGen(16384, 256, 1000, size=size)
    count = sum(p.numel() for p in m.parameters())
    unit = 1e6 if REFERENCE_SIZES[size] < 1e9 else 1e8
    assert round(count / unit) == round(REFERENCE_SIZES[size] / unit)
    if size == "GPT-B":
        assert (m.n_layer, m.n_head, m.n_embd, count) == (12, 12, 768, 110_888_448)
        assert m.layers[0].feed_forward.w1.weight.shape == (2048, 768)


def test_unknown_preset_is_named():
    with pytest.raises(ValueError, match="GPT-B"):
        LlamaGen(16, 16, 3, size="GPT-M")


@pytest.mark.parametrize("model", [LlamaGen, ARPG])
def test_2d_rope_models_refuse_a_grid_or_head_width_rope_cannot_split(model):
    with pytest.raises(ValueError, match="block_size=12 is not a square"):
        model(16, 12, 3)
    with pytest.raises(ValueError, match="dim=96 / n_head=16"):  # head width 6: not a multiple of 4
        model(16, 16, 3, n_head=16)


@pytest.mark.parametrize("cfg_scale", [1.0, 2.0])
def test_sampler_logprobs_equal_teacher_forced(model, cfg_scale):
    prefix = torch.randint(0, V, (6, 3))
    labels = torch.tensor([0, 1, 2, 3, 4, -1])  # -1: the null class
    tokens, logp = sample_codes_with_logprobs(model, (prefix, labels), T, temperature=0.7, cfg_scale=cfg_scale,
                                              generator=torch.Generator().manual_seed(0))
    assert torch.equal(tokens[:, :3], prefix) and (logp[:, :3] == 0).all()
    recomputed = compute_sequence_logprob(model, tokens, labels, temperature=0.7, cfg_scale=cfg_scale)
    assert (recomputed[:, 3:] - logp[:, 3:]).abs().max() <= 1e-5


def test_kv_cache_matches_naive_recompute(model):
    start = (torch.zeros(4, 0, dtype=torch.long), torch.tensor([0, 1, 2, -1]))
    cached = sample_codes_with_logprobs(model, start, T, cfg_scale=2.0, generator=torch.Generator().manual_seed(3))
    naive = sample_codes_with_logprobs(model, start, T, cfg_scale=2.0, generator=torch.Generator().manual_seed(3),
                                       use_cache=False)
    assert torch.equal(cached[0], naive[0])
    assert torch.allclose(cached[1], naive[1], atol=1e-5)


def compose(overrides=()):
    return compose_config(["policy=llamagen", *overrides])


def test_yaml_composes_against_its_schema():
    cfg = compose(["policy.size=GPT-B"])
    assert cfg.policy._target_ == "rlar.policy.llamagen_build.build_llamagen_prior"
    assert cfg.policy.size == "GPT-B" and cfg.policy.vocab_size == cfg.tokenizer.codebook_size
    with pytest.raises(ConfigCompositionException, match="n_embd"):
        compose(["policy.n_embd=8"])  # GPT's name for the width: not a key here


@pytest.mark.slow  # pretrains a prior
def test_builder_pretrains_caches_and_loads_checkpoints(tmp_path, monkeypatch):
    cfg = compose([f"cache_dir={tmp_path}", "tokenizer.train.steps=20", "policy.pretrain.steps=3",
                   "policy.pretrain.batch_size=8"])
    data = DigitsData()
    tokenizer = instantiate(cfg.tokenizer, data=data)
    policy = instantiate(cfg.policy, tokenizer=tokenizer, data=data)
    assert isinstance(policy, LlamaGen) and policy.block_size == tokenizer.num_tokens and policy.num_classes == 10
    cached = list(tmp_path.glob("llamagen_prior-*.pt"))
    assert len(cached) == 1 and cached[0].with_suffix(".json").is_file()
    monkeypatch.setattr("rlar.policy.prior.pretrain_gpt", None)  # a second build must not train
    again = build_llamagen_prior(tokenizer, data, vocab_size=tokenizer.codebook_size, n_layer=2, n_head=4, dim=96,
                                 pretrain={"steps": 3, "batch_size": 8}, cache_dir=tmp_path)
    first = policy.state_dict()
    assert all(torch.equal(first[k], v) for k, v in again.state_dict().items())
    torch.save({"model": policy.state_dict()}, tmp_path / "c2i.pt")
    loaded = instantiate(cfg.policy, tokenizer=tokenizer, data=data, checkpoint=str(tmp_path / "c2i.pt"))
    assert torch.equal(loaded.output.weight, policy.output.weight)
