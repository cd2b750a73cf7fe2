"""policy=arpg: the two-pass decoder, its checkpoints, the parallel sampler and its teacher-forced recompute."""

import argparse
import math

import pytest
import torch
from hydra.utils import instantiate

from rlar.config.store import compose_config
from rlar.config.validate import ConfigError, check_config
from rlar.data.digits import DigitsData
from rlar.loop import train_rl_loop
from rlar.policy.arpg import ARPG, ARPG_PRESETS, load_arpg_state, rotate, two_pass_masks
from rlar.policy.arpg_build import build_arpg_prior
from rlar.policy.prior import pretrain_gpt
from rlar.rollout.parallel_decoding import SCHEDULES, arpg_logprobs, sample_parallel, step_cfg_scales, step_sizes
from rlar.rollout.sampling import truncate

V, T, C = 32, 16, 5  # vocabulary, image tokens (a 4x4 grid), classes


@pytest.fixture
def model():
    torch.manual_seed(0)
    m = ARPG(V, T, C, n_layer=4, n_head=2, dim=32, multiple_of=32).eval()
    torch.nn.init.normal_(m.head.weight, std=0.3)  # ARPG zero-inits it: logits would be constant
    return m


def reference_state(vocab=64, classes=10, n_layer=4, dim=64, hidden=192) -> dict:
    """The key names and shapes of the reference ``Transformer.state_dict()`` (freqs_cis is no buffer there)."""
    ffn = {"ffn.w1.weight": (hidden, dim), "ffn.w3.weight": (hidden, dim), "ffn.w2.weight": (dim, hidden),
           "attn_norm.weight": (dim,), "ffn_norm.weight": (dim,), "attn.to_q.weight": (dim, dim),
           "attn.proj.weight": (dim, dim)}
    shapes = {"embeddings.weight": (vocab + classes + 3, dim), "layers.norm.weight": (dim,),
              "layers.to_k.weight": (dim, dim), "layers.to_v.weight": (dim, dim), "norm.weight": (dim,),
              "head.weight": (vocab, dim)}
    for i in range(n_layer // 2):
        shapes |= {f"layers.self_dec.{i}.{k}": s for k, s in ffn.items()}
        shapes |= {f"layers.self_dec.{i}.attn.{k}.weight": (dim, dim) for k in ("to_k", "to_v")}
        shapes |= {f"layers.cross_dec.{i}.{k}": s for k, s in ffn.items()}
    return {k: torch.randn(s) for k, s in shapes.items()}


def small():  # hidden: int(2 * 4 * 64 / 3) = 170, rounded up to a multiple of 64 = 192
    return ARPG(64, 64, 10, n_layer=4, n_head=4, dim=64, multiple_of=64)


@pytest.mark.parametrize("wrapper", ["state_dict", "model", "module", None])
def test_reference_state_dict_loads_strictly(tmp_path, wrapper):
    state = reference_state()
    checkpoint = state if wrapper is None else {wrapper: state, "args": argparse.Namespace(model="ARPG-L"), "steps": 3}
    torch.save(checkpoint, tmp_path / "arpg.pt")
    m = load_arpg_state(small(), tmp_path / "arpg.pt")
    assert set(m.state_dict()) == set(state)
    assert all(torch.equal(m.state_dict()[k], v) for k, v in state.items())


def test_missing_unexpected_and_misshapen_keys_are_listed():
    state = reference_state()
    state["output.weight"] = state.pop("head.weight")
    with pytest.raises(ValueError, match=r"(?s)missing: head.weight.*unexpected: output.weight"):
        load_arpg_state(small(), state)
    state = reference_state()
    state["embeddings.weight"] = torch.zeros(75, 64)
    with pytest.raises(ValueError, match=r"embeddings.weight: file \(75, 64\) vs model \(77, 64\)") as refused:
        load_arpg_state(small(), state)
    assert "check policy.size" in str(refused.value) and "num_classes" in str(refused.value)  # what sets the shapes


REFERENCE_SIZES = {"L": 319.8e6, "XL": 719.0e6, "XXL": 1302.4e6}  # 16384 codes, 1000 classes, 256 tokens


@pytest.mark.parametrize("size", list(ARPG_PRESETS))
def test_presets_have_the_reference_sizes(size):
    with torch.device("meta"):
        m = ARPG(16384, 256, 1000, size=size)
    assert round(sum(p.numel() for p in m.parameters()) / 1e5) == round(REFERENCE_SIZES[size] / 1e5)
    assert m.embeddings.weight.shape == (17387, m.n_embd) and m.n_embd // m.n_head == 64
    assert len(m.layers.self_dec) == len(m.layers.cross_dec) == m.n_layer // 2


def test_token_id_layout(model):
    assert model.mask_id == V and model.embeddings.weight.shape == (V + C + 3, 32)
    assert model.class_ids(torch.tensor([0, 2, -1]), 3, "cpu").tolist() == [V + 1, V + 3, V + 1 + C]
    assert model.class_ids(None, 2, "cpu").tolist() == [V + 1 + C] * 2
    tokens, orders = torch.randint(0, V, (2, T)), torch.rand(2, T).argsort(1)
    base = model(tokens, torch.tensor([2, 1]), orders=orders)
    with torch.no_grad():
        model.embeddings.weight[V + 3] += 1.0  # class 2's row
    changed = model(tokens, torch.tensor([2, 1]), orders=orders)
    assert not torch.allclose(changed[0], base[0]) and torch.equal(changed[1], base[1])
    with torch.no_grad():
        model.embeddings.weight[V] += 1.0  # the [MASK] row: every query starts from it
    assert not torch.allclose(model(tokens, torch.tensor([2, 1]), orders=orders)[1], base[1])


def test_rope_class_rows_are_zero_and_grid_rows_turn_by_row_and_column():
    m = ARPG(8, 4, 2, n_layer=2, n_head=1, dim=8)  # a 2x2 grid, head width 8: frequencies (1, 0.01)
    table = m.freqs_cis
    assert table.shape == (5, 4, 2) and (table[0] == 0).all()  # the class slot: zeros, not the identity
    angles = torch.tensor([[0.0, 0.0, 0.0, 0.0], [0.0, 0.0, 1.0, 0.01], [1.0, 0.01, 0.0, 0.0], [1.0, 0.01, 1.0, 0.01]])
    assert torch.allclose(table[1:], torch.stack([angles.cos(), angles.sin()], -1), atol=1e-6)
    x = torch.randn(1, 5, 1, 8)
    y = rotate(x, table[None])
    assert (y[0, 0] == 0).all()  # the class token's query and key vanish
    a, b = x[0, 3, 0, 2], x[0, 3, 0, 3]  # pair 1 of token 3 (row 1, column 1) turns by 0.01
    assert torch.allclose(y[0, 3, 0, 2:4], torch.stack([a * math.cos(0.01) - b * math.sin(0.01),
                                                         b * math.cos(0.01) + a * math.sin(0.01)]))


def test_training_masks_are_causal():
    self_mask, cross_mask = two_pass_masks(torch.ones(6, dtype=torch.long))
    causal = torch.ones(6, 6, dtype=torch.bool).tril()
    assert torch.equal(self_mask, causal) and torch.equal(cross_mask, causal)


def test_step_masks_are_block_causal():
    # steps of 2, 3, 1 tokens: Pass 1 reads [class, a0 a1, b0 b1 b2] (groups 0, 1 1, 2 2 2)
    self_mask, cross_mask = two_pass_masks([2, 3, 1])
    group = torch.tensor([0, 1, 1, 2, 2, 2])
    assert torch.equal(self_mask, group[None] <= group[:, None])  # a step's tokens see each other, none later
    step = torch.tensor([0, 0, 1, 1, 1, 2])  # queries: those of step s see the class and the steps before s
    assert torch.equal(cross_mask, group[None] <= step[:, None])
    assert cross_mask[0].tolist() == [True, False, False, False, False, False]


def test_logits_depend_only_on_what_the_masks_allow(model):
    tokens, labels = torch.randint(0, V, (1, T)), torch.tensor([1])
    orders = torch.randperm(T)[None]
    sizes = torch.tensor([3, 5, 8])
    for step_sizes_ in (None, sizes):  # training (causal) and the step-grouped recompute
        base = model(tokens, labels, orders=orders, step_sizes=step_sizes_)
        for j in (0, 2, 3, 9):  # change the j-th decoded token
            changed = tokens.clone()
            changed[0, orders[0, j]] = (changed[0, orders[0, j]] + 1) % V
            diff = (model(changed, labels, orders=orders, step_sizes=step_sizes_) - base).abs().amax(-1)[0]
            diff = diff[orders[0]]  # decode order
            first = j + 1 if step_sizes_ is None else int(sizes.cumsum(0)[(sizes.cumsum(0) <= j).sum()])
            assert (diff[:first] == 0).all() and (diff[first:] > 0).all()


@pytest.mark.parametrize("schedule", list(SCHEDULES))
@pytest.mark.parametrize("num_iter", [1, 2, 5, 16, 63, 64, 100])
def test_schedules_fill_every_position_once(schedule, num_iter):
    sizes = step_sizes(64, num_iter, schedule)
    assert len(sizes) == min(num_iter, 64) and (sizes >= 1).all() and sizes.sum() == 64


def test_schedules_match_the_reference_counts():
    arccos = step_sizes(256, 64, "arccos").tolist()
    assert arccos[:3] == [3, 3, 2] and arccos[-4:] == [7, 10, 12, 28]
    cosine = step_sizes(256, 64, "cosine").tolist()
    assert cosine[:13] == [1] * 13 and cosine[13] > 1
    assert step_sizes(16, 4, "linear").tolist() == [4, 4, 4, 4]


@pytest.mark.parametrize("seq_len,num_iter", [(256, 39), (256, 51), (576, 78), (1024, 150), (256, 64)])
def test_the_cosine_schedule_rounds_as_arpgs(seq_len, num_iter):
    """ARPG keeps int(T * cos(pi / 2. * (s + 1) / N)) positions masked after step s, multiplying before it divides:
    at cos(pi / 3) = 0.5, 256 * 0.5 is 127.99999999999997 there, and a step's token would move to the next."""
    left, expected = seq_len, []
    for s in range(num_iter - 1):  # ARPG's rule: at least one token a step, the last step takes the rest
        masked = min(max(int(seq_len * math.cos(math.pi / 2. * (s + 1) / num_iter)), 1), left - 1)
        expected.append(left - masked)
        left = masked
    expected.append(left)
    assert step_sizes(seq_len, num_iter, "cosine").tolist() == expected


def test_cfg_schedules():
    sizes = torch.tensor([2, 2, 4])
    assert step_cfg_scales(sizes, 3.0, "constant").tolist() == [3.0, 3.0, 3.0]
    assert step_cfg_scales(sizes, 3.0, "linear").tolist() == [1.5, 2.0, 3.0]  # 1 + 2 * decoded / 8


@pytest.mark.parametrize("schedule,num_iter", [("arccos", 1), ("cosine", 5), ("linear", 40)])
def test_sampler_fills_each_position_exactly_once(model, schedule, num_iter):
    s = sample_parallel(model, torch.tensor([0, 1, 2]), 3, num_iter=num_iter, schedule=schedule,
                        generator=torch.Generator().manual_seed(0))
    assert torch.equal(s.orders.sort(1).values, torch.arange(T).expand(3, T))  # a permutation per sample
    assert not torch.equal(s.orders[0], s.orders[1])
    assert (s.step_sizes >= 1).all() and s.step_sizes.sum() == T
    assert (s.logprobs < 0).all()  # every position drawn


@pytest.mark.parametrize("cfg_scale,cfg_schedule,top_k,top_p", [(2.0, "linear", 5, None), (3.0, "constant", None, 0.8),
                                                                 (1.0, "constant", None, None)])
def test_sampler_logprobs_equal_the_teacher_forced_recompute(model, cfg_scale, cfg_schedule, top_k, top_p):
    labels = torch.tensor([0, 1, 2, 3, 4, -1])  # -1: the null class
    s = sample_parallel(model, labels, 6, num_iter=5, schedule="arccos", temperature=0.7, top_k=top_k, top_p=top_p,
                        cfg_scale=cfg_scale, cfg_schedule=cfg_schedule, generator=torch.Generator().manual_seed(0))
    logp, _ = arpg_logprobs(model, s.tokens, labels, temperature=0.7, **s.schedule())  # [6, T, V]
    assert (logp.gather(-1, s.tokens[..., None])[..., 0] - s.logprobs).abs().max() <= 1e-5
    kept = truncate(logp.flatten(0, 1), top_k, top_p).isfinite().view_as(logp)  # truncation restricts the draw only
    assert kept.gather(-1, s.tokens[..., None]).all()


def test_recompute_is_differentiable_and_returns_hidden_states(model):
    labels = torch.tensor([0, 1])
    s = sample_parallel(model, labels, 2, num_iter=4, cfg_scale=2.0, generator=torch.Generator().manual_seed(1))
    logp, hidden = arpg_logprobs(model, s.tokens, labels, hidden=True, **s.schedule())
    assert hidden.shape == (2, T, 32)
    logp.gather(-1, s.tokens[..., None]).sum().backward()
    assert model.layers.self_dec[0].attn.to_q.weight.grad.abs().sum() > 0


def test_random_order_pretraining_lowers_the_loss():
    torch.manual_seed(0)
    labels = torch.arange(40) % 4
    codes = (labels[:, None] * 3 + torch.arange(T)) % V  # each class one image
    m = ARPG(V, T, 4, n_layer=2, n_head=2, dim=32, multiple_of=32)
    losses = pretrain_gpt(m, codes, labels, 60, 3e-3, 16, 0.1, torch.Generator().manual_seed(0))
    assert losses[0] == pytest.approx(math.log(V), abs=1e-3)  # the zero head: uniform
    assert sum(losses[-10:]) / 10 < 0.8 * losses[0]


def compose(overrides=()):
    return compose_config(["policy=arpg", "rollout.mode=parallel", *overrides])


@pytest.mark.parametrize("overrides,message", [
    (["policy=arpg"], "set rollout.mode=parallel"),
    (["rollout.mode=parallel"], "set policy=arpg"),
    (["policy=arpg", "rollout.mode=parallel", "rollout.schedule=cubic"], "rollout.schedule='cubic'"),
    (["policy=arpg", "rollout.mode=parallel", "rollout.cfg_schedule=step"], "rollout.cfg_schedule='step'"),
    (["policy=arpg", "rollout.mode=parallel", "rollout.num_iter=0"], "rollout.num_iter"),
    (["policy=arpg", "rollout.mode=parallel", "rollout.cfg_interval=[0.2,0.8]"], "cfg_interval"),
    (["policy=arpg", "rollout.mode=parallel", "rollout.cfg_scale=2", "algorithm.ntp_weight=0.1"], "ntp_weight"),
])
def test_bad_parallel_settings_are_refused(overrides, message):
    with pytest.raises(ConfigError, match=message):
        check_config(compose_config(overrides))


@pytest.mark.slow  # pretrains a prior
def test_builder_pretrains_caches_and_loads_checkpoints(tmp_path, monkeypatch):
    cfg = compose([f"cache_dir={tmp_path}", "tokenizer.train.steps=20", "policy.pretrain.steps=3",
                   "policy.pretrain.batch_size=8", "rollout.num_iter=6", "rollout.schedule=cosine"])
    check_config(cfg)
    data = DigitsData()
    tokenizer = instantiate(cfg.tokenizer, data=data)
    policy = instantiate(cfg.policy, tokenizer=tokenizer, data=data)
    assert isinstance(policy, ARPG) and policy.block_size == tokenizer.num_tokens and policy.num_classes == 10
    assert policy.decoding == {"num_iter": 6, "schedule": "cosine", "cfg_schedule": "constant"}
    assert len(list(tmp_path.glob("arpg_prior-*.pt"))) == 1
    monkeypatch.setattr("rlar.policy.prior.pretrain_gpt", None)  # a second build must not train
    again = build_arpg_prior(tokenizer, data, vocab_size=tokenizer.codebook_size,
                             pretrain={"steps": 3, "batch_size": 8}, cache_dir=tmp_path)
    assert all(torch.equal(policy.state_dict()[k], v) for k, v in again.state_dict().items())
    torch.save({"state_dict": policy.state_dict()}, tmp_path / "arpg.pt")
    loaded = instantiate(cfg.policy, tokenizer=tokenizer, data=data, checkpoint=str(tmp_path / "arpg.pt"))
    assert torch.equal(loaded.head.weight, policy.head.weight)


@pytest.mark.slow
def test_tiny_loop_fine_tunes_arpg_with_ratio_one(tiny, tmp_path, tb_scalars):
    cfg = compose([*tiny, "rollout.num_iter=8", "rollout.cfg_scale=2.0", "rollout.cfg_schedule=linear",
                   "rollout.temperature=0.7", "rollout.top_k=16", "eval.max_items=4", "algorithm.beta=0.05",
                   "algorithm.ntp_weight=0"])  # guidance cannot pair the next-token term's random orders
    check_config(cfg)
    summary = train_rl_loop(cfg, tmp_path)
    assert max(tb_scalars(tmp_path, "policy/ratio_max_abs_dev")) <= 1e-5
    assert all(v >= 0 for v in tb_scalars(tmp_path, "loss/kl"))
    assert math.isfinite(summary["eval_reward_before"]) and math.isfinite(summary["eval_reward_after"])
