"""The published tokenizers (LlamaGen VQ, taming VQGAN, IBQ) and the taming transformer loader, at tiny widths.

State dicts are written here from the public code's layout (key names and shapes), independently of rlar's
modules, then loaded strictly; the full-size layouts are checked against the key counts of the released models.
"""

import argparse

import pytest
import torch
import torch.nn.functional as F
from hydra.utils import instantiate
from omegaconf import OmegaConf

from rlar.config.store import compose_config
from rlar.policy.gpt import GPT
from rlar.policy.taming_gpt import load_taming_transformer
from rlar.runtime.cache import source_key
from rlar.tokenizer.frozen import FrozenTokenizer, build_tokenizer_frozen
from rlar.tokenizer.ibq import IBQ
from rlar.tokenizer.llamagen_vq import LlamaGenVQ
from rlar.tokenizer.taming_vqgan import TamingVQGAN
from rlar.tokenizer.zoo_build import (
    build_ibq,
    build_llamagen_vq,
    build_taming_vqgan,
    build_toklip_tokenizer,
    build_toklip_vq_model,
    read_checkpoint,
)

# -- the public layouts, written from the reference code -------------------------------------------------------


def resnet(prefix, cin, cout):
    keys = {f"{prefix}.norm1.weight": (cin,), f"{prefix}.norm1.bias": (cin,),
            f"{prefix}.conv1.weight": (cout, cin, 3, 3), f"{prefix}.conv1.bias": (cout,),
            f"{prefix}.norm2.weight": (cout,), f"{prefix}.norm2.bias": (cout,),
            f"{prefix}.conv2.weight": (cout, cout, 3, 3), f"{prefix}.conv2.bias": (cout,)}
    if cin != cout:
        keys.update({f"{prefix}.nin_shortcut.weight": (cout, cin, 1, 1), f"{prefix}.nin_shortcut.bias": (cout,)})
    return keys


def attn(prefix, c):
    keys = {f"{prefix}.norm.weight": (c,), f"{prefix}.norm.bias": (c,)}
    for name in ("q", "k", "v", "proj_out"):
        keys.update({f"{prefix}.{name}.weight": (c, c, 1, 1), f"{prefix}.{name}.bias": (c,)})
    return keys


def convs(prefix, cout, cin, k):
    return {f"{prefix}.weight": (cout, cin, k, k), f"{prefix}.bias": (cout,)}


def norm(prefix, c):
    return {f"{prefix}.weight": (c,), f"{prefix}.bias": (c,)}


def quant(n_embed, embed_dim, z):
    return {"quantize.embedding.weight": (n_embed, embed_dim), **convs("quant_conv", embed_dim, z, 1),
            **convs("post_quant_conv", z, embed_dim, 1)}


def taming_layout(ch, ch_mult, num_res_blocks, attn_resolutions, resolution, z_channels, n_embed, embed_dim):
    """taming/modules/diffusionmodules/model.py Encoder + Decoder, taming/models/vqgan.py VQModel (generator)."""
    keys = convs("encoder.conv_in", ch, 3, 3)
    res, block_in, n = resolution, ch, len(ch_mult)
    for i, m in enumerate(ch_mult):
        for j in range(num_res_blocks):
            keys |= resnet(f"encoder.down.{i}.block.{j}", block_in, ch * m)
            block_in = ch * m
            if res in attn_resolutions:
                keys |= attn(f"encoder.down.{i}.attn.{j}", block_in)
        if i != n - 1:
            keys |= convs(f"encoder.down.{i}.downsample.conv", block_in, block_in, 3)
            res //= 2
    keys |= resnet("encoder.mid.block_1", block_in, block_in) | attn("encoder.mid.attn_1", block_in)
    keys |= resnet("encoder.mid.block_2", block_in, block_in) | norm("encoder.norm_out", block_in)
    keys |= convs("encoder.conv_out", z_channels, block_in, 3)
    keys |= convs("decoder.conv_in", block_in, z_channels, 3)
    keys |= resnet("decoder.mid.block_1", block_in, block_in) | attn("decoder.mid.attn_1", block_in)
    keys |= resnet("decoder.mid.block_2", block_in, block_in)
    for i in reversed(range(n)):
        for j in range(num_res_blocks + 1):
            keys |= resnet(f"decoder.up.{i}.block.{j}", block_in, ch * ch_mult[i])
            block_in = ch * ch_mult[i]
            if res in attn_resolutions:
                keys |= attn(f"decoder.up.{i}.attn.{j}", block_in)
        if i != 0:
            keys |= convs(f"decoder.up.{i}.upsample.conv", block_in, block_in, 3)
            res *= 2
    keys |= norm("decoder.norm_out", block_in) | convs("decoder.conv_out", 3, block_in, 3)
    return keys | quant(n_embed, embed_dim, z_channels)


def llamagen_layout(ch, ch_mult, num_res_blocks, z_channels, codebook_size, embed_dim):
    """LlamaGen tokenizer/tokenizer_image/vq_model.py VQModel: conv_blocks/res/attn names, ModuleList mid."""
    keys = convs("encoder.conv_in", ch, 3, 3)
    block_in, n = ch, len(ch_mult)
    for i, m in enumerate(ch_mult):
        for j in range(num_res_blocks):
            keys |= resnet(f"encoder.conv_blocks.{i}.res.{j}", block_in, ch * m)
            block_in = ch * m
            if i == n - 1:
                keys |= attn(f"encoder.conv_blocks.{i}.attn.{j}", block_in)
        if i != n - 1:
            keys |= convs(f"encoder.conv_blocks.{i}.downsample.conv", block_in, block_in, 3)
    for side in ("encoder", "decoder"):
        keys |= resnet(f"{side}.mid.0", block_in, block_in) | attn(f"{side}.mid.1", block_in)
        keys |= resnet(f"{side}.mid.2", block_in, block_in)
    keys |= norm("encoder.norm_out", block_in) | convs("encoder.conv_out", z_channels, block_in, 3)
    keys |= convs("decoder.conv_in", block_in, z_channels, 3)
    for k, i in enumerate(reversed(range(n))):
        for j in range(num_res_blocks + 1):
            keys |= resnet(f"decoder.conv_blocks.{k}.res.{j}", block_in, ch * ch_mult[i])
            block_in = ch * ch_mult[i]
            if i == n - 1:
                keys |= attn(f"decoder.conv_blocks.{k}.attn.{j}", block_in)
        if i != 0:
            keys |= convs(f"decoder.conv_blocks.{k}.upsample.conv", block_in, block_in, 3)
    keys |= norm("decoder.norm_out", block_in) | convs("decoder.conv_out", 3, block_in, 3)
    return keys | quant(codebook_size, embed_dim, z_channels) | {"quantize.codebook_used": (65536,)}


def ema_layout(raw):
    """LitEma: decay, num_updates, one copy per parameter named without dots (all raw keys are parameters)."""
    return {"model_ema.decay": (), "model_ema.num_updates": (),
            **{"model_ema." + k.replace(".", ""): s for k, s in raw.items()}}


def random_state(layout, seed=0):
    g = torch.Generator().manual_seed(seed)
    state = {k: 0.2 * torch.randn(s, generator=g) for k, s in layout.items()}
    for k in state:
        if k.endswith(("norm1.weight", "norm2.weight", "norm.weight", "norm_out.weight")):
            state[k] = 1 + state[k]
    if "quantize.embedding.weight" in state:  # rows of very different norms: L2, cosine and dot product disagree
        e = state["quantize.embedding.weight"]
        state["quantize.embedding.weight"] = e * torch.rand(len(e), 1, generator=g) * 20
    if "model_ema.num_updates" in state:
        state["model_ema.decay"] = torch.tensor(0.999)
        state["model_ema.num_updates"] = torch.tensor(-1, dtype=torch.int32)
    return state


def shapes(model):
    return {k: tuple(v.shape) for k, v in model.state_dict().items()}


TAMING = {"ch": 32, "ch_mult": [1, 2, 2], "num_res_blocks": 1, "attn_resolutions": [8], "resolution": 32,
          "z_channels": 16}
DD = {**TAMING, "double_z": False, "in_channels": 3, "out_ch": 3, "dropout": 0.0}
LLAMA = {"ch": 32, "ch_mult": [1, 2, 2], "num_res_blocks": 1, "z_channels": 16}
N, D = 64, 8


@pytest.fixture(scope="module")
def tiny():
    torch.manual_seed(0)
    taming = TamingVQGAN(DD, N, D).eval()
    taming.load_state_dict(random_state(taming_layout(**TAMING, n_embed=N, embed_dim=D)))
    llama = LlamaGenVQ(32, N, D, True, **LLAMA).eval()
    llama.load_state_dict(random_state(llamagen_layout(**LLAMA, codebook_size=N, embed_dim=D)))
    ibq = IBQ({**DD, "num_res_blocks": 2}, N, D, use_ema=True).eval()
    raw = taming_layout(**{**TAMING, "num_res_blocks": 2}, n_embed=N, embed_dim=D)
    ibq.load_state_dict(random_state(raw | ema_layout(raw)))
    return {"taming": taming, "llamagen": llama, "ibq": ibq}


IMAGES = torch.rand(3, 3, 32, 32, generator=torch.Generator().manual_seed(1)) * 2 - 1

# -- layouts ---------------------------------------------------------------------------------------------------


def test_full_size_layouts_match_the_released_models():
    """taming f16_16384 generator: 343 keys; IBQ: 543 raw + 545 EMA keys (the released files' counts)."""
    dd = {"double_z": False, "z_channels": 256, "resolution": 256, "in_channels": 3, "out_ch": 3, "ch": 128,
          "ch_mult": [1, 1, 2, 2, 4], "num_res_blocks": 2, "attn_resolutions": [16], "dropout": 0.0}
    arch = {k: dd[k] for k in TAMING}
    with torch.device("meta"):
        taming = shapes(TamingVQGAN(dd, 16384, 256))
        ibq = shapes(IBQ({**dd, "num_res_blocks": 4}, 262144, 256, use_ema=True))
        vq16 = shapes(LlamaGenVQ())
        vq8 = shapes(LlamaGenVQ(ch_mult=[1, 2, 2, 4]))
    assert taming == taming_layout(**arch, n_embed=16384, embed_dim=256) and len(taming) == 343
    raw = taming_layout(**{**arch, "num_res_blocks": 4}, n_embed=262144, embed_dim=256)
    assert ibq == raw | ema_layout(raw) and len(raw) == 543 and len(ema_layout(raw)) == 545
    assert vq16 == llamagen_layout(128, [1, 1, 2, 2, 4], 2, 256, 16384, 8)
    assert vq8 == llamagen_layout(128, [1, 2, 2, 4], 2, 256, 16384, 8)
    assert taming["encoder.conv_out.weight"] == (256, 512, 3, 3) and taming["decoder.conv_out.weight"] == (3, 128, 3, 3)


@pytest.mark.parametrize("kind", ["taming", "llamagen", "ibq"])
def test_renamed_key_or_wrong_shape_is_refused_with_a_listing(tmp_path, kind, tiny):
    state = dict(tiny[kind].state_dict())
    state["encoder.conv_in.wieght"] = state.pop("encoder.conv_in.weight")
    state["quant_conv.bias"] = torch.zeros(D + 1)
    path = tmp_path / "bad.ckpt"
    torch.save({"model": state} if kind == "llamagen" else {"state_dict": state}, path)
    build = {"taming": lambda: build_taming_vqgan(checkpoint=str(path), ddconfig=DD, image_size=32,
                                                  codebook_size=N, embed_dim=D),
             "llamagen": lambda: build_llamagen_vq(checkpoint=str(path), image_size=32, codebook_size=N,
                                                   codebook_embed_dim=D, **LLAMA),
             "ibq": lambda: build_ibq(checkpoint=str(path), ddconfig={**DD, "num_res_blocks": 2}, image_size=32,
                                      codebook_size=N, embed_dim=D)}[kind]
    with pytest.raises(ValueError, match=r"(?s)1 missing, 1 unexpected, 1 of another shape.*"
                                         r"missing: encoder\.conv_in\.weight.*unexpected: encoder\.conv_in\.wieght"
                                         r".*quant_conv\.bias: file \(9,\) vs model \(8,\)"):
        build()


# -- checkpoint files --------------------------------------------------------------------------------------------


class LightningCallbackStandIn:
    """Pickled by reference like PL 1.x's ``callbacks`` keys; loading must not need (or run) it."""


def test_llamagen_release_file_with_training_extras_loads(tmp_path, tiny):
    path = tmp_path / "vq_ds4.pt"
    torch.save({"model": tiny["llamagen"].state_dict(), "steps": 7, "args": argparse.Namespace(vq_model="VQ-16"),
                "optimizer": {"state": {}, "param_groups": []}}, path)
    tok = build_llamagen_vq(checkpoint=str(path), image_size=32, codebook_size=N, codebook_embed_dim=D, **LLAMA)
    assert isinstance(tok, FrozenTokenizer) and tok.grid == (8, 8) and tok.codebook_size == N
    assert torch.equal(tok.encode_indices(IMAGES), tiny["llamagen"].encode_indices(IMAGES))


def test_llamagen_without_the_codebooks_l2_norm_has_another_source(tmp_path, tiny):
    """``codebook_l2_norm`` changes every code and not the file: the prior's cache key (the source's) tells the two
    apart, and the default keeps the plain path (the keys of caches built before)."""
    path = tmp_path / "vq_ds4.pt"
    torch.save({"model": tiny["llamagen"].state_dict()}, path)
    normed, raw = (build_llamagen_vq(checkpoint=str(path), image_size=32, codebook_size=N, codebook_embed_dim=D,
                                     codebook_l2_norm=norm, **LLAMA) for norm in (True, False))
    assert not torch.equal(normed.encode_indices(IMAGES), raw.encode_indices(IMAGES))
    assert normed.source == str(path)
    assert source_key(raw.source, tmp_path / "cache") != source_key(normed.source, tmp_path / "cache")


def test_taming_vqgan_file_drops_loss_keys_and_stubs_lightning_classes(tmp_path, tiny):
    state = dict(tiny["taming"].state_dict())
    state["loss.discriminator.main.0.weight"] = torch.zeros(64, 3, 4, 4)
    state["loss.discriminator.main.1.num_batches_tracked"] = torch.tensor(5)
    state["loss.perceptual_loss.net.slice1.0.weight"] = torch.zeros(64, 3, 3, 3)
    path = tmp_path / "last.ckpt"
    torch.save({"state_dict": state, "epoch": 3, "callbacks": {LightningCallbackStandIn: {"best_model_score": None}}},
               path)
    with pytest.raises(Exception, match="LightningCallbackStandIn"):
        torch.load(path, weights_only=True)
    assert "callbacks" in read_checkpoint(path, "test")
    tok = build_taming_vqgan(checkpoint=str(path), ddconfig=DD, image_size=32, codebook_size=N, embed_dim=D)
    assert torch.equal(tok.encode_indices(IMAGES), tiny["taming"].encode_indices(IMAGES))


def test_net2net_file_gives_the_first_stage_and_the_transformer(tmp_path, tiny):
    gpt_state = taming_transformer_state(vocab=N, block=64)
    state = {**{"first_stage_model." + k: v for k, v in tiny["taming"].state_dict().items()},
             **{"transformer." + k: v for k, v in gpt_state.items()}}
    path = tmp_path / "cin.ckpt"
    torch.save({"state_dict": state}, path)
    tok = build_taming_vqgan(checkpoint=str(path), ddconfig=DD, image_size=32, codebook_size=N, embed_dim=D)
    assert torch.equal(tok.encode_indices(IMAGES), tiny["taming"].encode_indices(IMAGES))
    gpt = load_taming_transformer(GPT(N, 64, num_classes=10, n_layer=2, n_head=4, n_embd=32), str(path), 10)
    assert torch.equal(gpt.tok_emb.weight, gpt_state["tok_emb.weight"])


def test_ibq_file_with_ema_loads_and_ema_stays_unused(tmp_path, tiny):
    state = dict(tiny["ibq"].state_dict())
    state["model_ema.quantizeembeddingweight"] = torch.zeros(N, D)  # the EMA codebook must not be used
    path = tmp_path / "imagenet256_64.ckpt"
    torch.save({"state_dict": state}, path)
    tok = build_ibq(checkpoint=str(path), ddconfig={**DD, "num_res_blocks": 2}, image_size=32, codebook_size=N,
                    embed_dim=D)
    assert tok.vq.model_ema.num_updates.dtype == torch.int32 and not tok.vq.model_ema.quantizeembeddingweight.any()
    assert torch.equal(tok.encode_indices(IMAGES), tiny["ibq"].encode_indices(IMAGES))
    assert len(tok.encode_indices(IMAGES).unique()) > 1


def ibq_file_with_distinct_ema(tmp_path, tiny):
    """An IBQ file whose EMA copies (model_ema.*) differ from the raw weights (another random draw)."""
    raw = {k: v for k, v in tiny["ibq"].state_dict().items() if not k.startswith("model_ema.")}
    ema = random_state({k: tuple(v.shape) for k, v in raw.items()}, seed=5)
    state = {**raw, "model_ema.decay": torch.tensor(0.999), "model_ema.num_updates": torch.tensor(7, dtype=torch.int32),
             **{"model_ema." + k.replace(".", ""): v for k, v in ema.items()}}
    path = tmp_path / "imagenet256_64_ema.ckpt"
    torch.save({"state_dict": state}, path)
    return path, raw, ema


@pytest.mark.parametrize("weights", ["raw", "ema"])
def test_ibq_weights_option_picks_raw_or_ema_weights(tmp_path, tiny, weights):
    path, raw, ema = ibq_file_with_distinct_ema(tmp_path, tiny)
    tok = build_ibq(checkpoint=str(path), ddconfig={**DD, "num_res_blocks": 2}, image_size=32, codebook_size=N,
                    embed_dim=D, weights=weights)
    expected, other = (raw, ema) if weights == "raw" else (ema, raw)
    params = dict(tok.vq.named_parameters())
    assert params.keys() == expected.keys()
    assert all(torch.equal(params[k], expected[k]) for k in expected)
    assert not any(torch.equal(params[k], other[k]) for k in expected)
    assert (tok.source == str(path)) == (weights == "raw")  # a prior cached for raw codes is not reused for EMA


def test_ibq_ema_weights_from_a_file_without_them_is_refused(tmp_path, tiny):
    raw = {k: v for k, v in tiny["ibq"].state_dict().items() if not k.startswith("model_ema.")}
    path = tmp_path / "no_ema.ckpt"
    torch.save({"state_dict": raw}, path)
    build = dict(checkpoint=str(path), ddconfig={**DD, "num_res_blocks": 2}, image_size=32, codebook_size=N,
                 embed_dim=D)
    assert build_ibq(**build, use_ema=False).codebook_size == N  # raw weights need no EMA copies
    for use_ema in (True, False):
        with pytest.raises(ValueError, match=r"tokenizer.weights=ema but .*no_ema.ckpt holds no EMA weights"):
            build_ibq(**build, use_ema=use_ema, weights="ema")
    with pytest.raises(ValueError, match="tokenizer.weights must be one of"):
        build_ibq(**build, use_ema=False, weights="shadow")
    with pytest.raises(ValueError, match=r"no_ema.ckpt holds no EMA weights .* set tokenizer.use_ema=false"):
        build_ibq(**build)  # the defaults (use_ema, raw weights): before, a list of 157 missing keys


def test_seeds_toklip_api(tmp_path, tiny):
    path = tmp_path / "ibq.ckpt"
    torch.save({"state_dict": tiny["ibq"].state_dict()}, path)
    init_args = {"ddconfig": {**DD, "num_res_blocks": 2}, "lossconfig": {"target": "some.Loss", "params": {}},
                 "n_embed": N, "embed_dim": D, "l2_normalize": True, "use_ema": True, "stage": None}
    vq = build_toklip_vq_model(init_args, ckpt_path=str(path), device="cpu")
    assert isinstance(vq, IBQ) and not vq.training and vq.grid == (8, 8)
    tok = build_toklip_tokenizer(init_args, ckpt_path=str(path))
    assert isinstance(tok, FrozenTokenizer) and isinstance(tok.vq, IBQ)
    wrapped = build_tokenizer_frozen(vq)
    codes = wrapped.encode_indices(IMAGES)
    assert torch.equal(codes, tok.encode_indices(IMAGES)) and codes.shape == (3, 64)
    assert wrapped.decode_code(codes).shape == (3, 3, 32, 32)
    with pytest.raises(ValueError, match="model_ema"):  # use_ema False refuses a file that has EMA copies
        build_toklip_vq_model({**init_args, "use_ema": False}, ckpt_path=str(path))


# -- codes and images --------------------------------------------------------------------------------------------


def latent(model, images):
    return model.quant_conv(model.encoder(images)).permute(0, 2, 3, 1).reshape(-1, D).double()  # [B*h*w, D]


def rule_costs(model):
    """Cost of every (position, code) pair under each rule, in float64: {l2, cos, dot: [B*h*w, N]}."""
    z, e = latent(model, IMAGES), model.quantize.embedding.weight.double()
    l2 = ((z[:, None] - e[None]) ** 2).sum(-1)
    cos = F.cosine_similarity(z[:, None], e[None], dim=-1)
    return {"l2": l2, "cos": -cos, "dot": -(z @ e.T)}


@pytest.mark.parametrize("kind,rule", [("taming", "l2"), ("llamagen", "cos"), ("ibq", "dot")])
@torch.no_grad()
def test_codes_follow_each_models_rule(kind, rule, tiny):
    model = tiny[kind]
    codes = model.encode_indices(IMAGES).flatten()
    costs = rule_costs(model)
    best = {name: c.argmin(1) for name, c in costs.items()}
    chosen = costs[rule].gather(1, codes[:, None])[:, 0]
    assert torch.allclose(chosen, costs[rule].min(1).values, atol=1e-5)  # a minimizer of the rule, up to rounding
    assert (codes == best[rule]).float().mean() > 0.98
    for other in set(best) - {rule}:  # the other rules would pick other codes here: the check can fail
        assert (best[other] != best[rule]).any()


@pytest.mark.parametrize("kind", ["taming", "llamagen", "ibq"])
@torch.no_grad()
def test_decode_goes_through_the_codebook_rows_row_major(kind, tiny):
    model = tiny[kind]
    codes = model.encode_indices(IMAGES)
    e = model.quantize.embedding.weight
    if kind == "llamagen":
        e = F.normalize(e, dim=-1)
    h, w = model.grid
    z_q = torch.zeros(len(codes), D, h, w)
    for b in range(len(codes)):
        for r in range(h):
            for c in range(w):
                z_q[b, :, r, c] = e[codes[b, r * w + c]]
    expected = model.decoder(model.post_quant_conv(z_q))
    assert torch.allclose(model.decode_code(codes), expected, rtol=1e-4, atol=1e-4)


@torch.no_grad()
def test_llamagen_decoder_gets_a_non_square_latent_shape_from_the_grid(tiny):
    model = LlamaGenVQ((16, 32), N, D, True, **LLAMA).eval()
    model.load_state_dict(tiny["llamagen"].state_dict())
    images = torch.rand(2, 3, 16, 32) * 2 - 1
    codes = model.encode_indices(images)
    assert model.grid == (4, 8) and codes.shape == (2, 32)
    z = F.normalize(model.quant_conv(model.encoder(images)), dim=1)  # [2, D, 4, 8]
    e = F.normalize(model.quantize.embedding.weight, dim=-1)
    z_q = e[(torch.einsum("bdhw,nd->bnhw", z, e)).argmax(1)].permute(0, 3, 1, 2)  # the latent in place
    assert torch.allclose(model.decode_code(codes), model.decoder(model.post_quant_conv(z_q)), rtol=1e-4, atol=1e-4)
    assert model.decode_code(codes).shape == (2, 3, 16, 32)


@pytest.mark.parametrize("kind", ["taming", "llamagen", "ibq"])
def test_frozen_round_trip_range_and_out_of_range_codes(kind, tiny):
    tok = build_tokenizer_frozen(tiny[kind])
    codes = tok.encode_indices(IMAGES)
    assert codes.shape == (3, 64) and codes.dtype == torch.long
    images = tok.decode_code(codes)
    assert images.shape == (3, 3, 32, 32) and images.min() >= -1 and images.max() <= 1
    assert tiny[kind].decode_code(codes).abs().max() > 1  # unbounded before the clamp
    with pytest.raises(ValueError, match=r"\[0, 63\]"):
        tok.decode_code(torch.full((1, 64), N))


# -- the taming transformer ------------------------------------------------------------------------------------


def taming_transformer_state(vocab, block, n_layer=2, n_embd=32, seed=0):
    """minGPT's GPT state dict: tok_emb, pos_emb, blocks.N.{ln1,ln2,attn.{key,query,value,proj,mask},mlp.0,mlp.2},
    ln_f, head (no bias)."""
    g = torch.Generator().manual_seed(seed)
    layout = {"tok_emb.weight": (vocab, n_embd), "pos_emb": (1, block, n_embd), "ln_f.weight": (n_embd,),
              "ln_f.bias": (n_embd,), "head.weight": (vocab, n_embd)}
    for i in range(n_layer):
        p = f"blocks.{i}"
        layout |= {f"{p}.ln1.weight": (n_embd,), f"{p}.ln1.bias": (n_embd,), f"{p}.ln2.weight": (n_embd,),
                   f"{p}.ln2.bias": (n_embd,), f"{p}.mlp.0.weight": (4 * n_embd, n_embd),
                   f"{p}.mlp.0.bias": (4 * n_embd,), f"{p}.mlp.2.weight": (n_embd, 4 * n_embd),
                   f"{p}.mlp.2.bias": (n_embd,)}
        for name in ("key", "query", "value", "proj"):
            layout |= {f"{p}.attn.{name}.weight": (n_embd, n_embd), f"{p}.attn.{name}.bias": (n_embd,)}
    state = {k: 0.3 * torch.randn(s, generator=g) for k, s in layout.items()}
    for i in range(n_layer):
        state[f"blocks.{i}.attn.mask"] = torch.ones(block, block).tril().view(1, 1, block, block)
    return state


@torch.no_grad()
def test_taming_transformer_first_position_matches_a_hand_built_pass():
    state = taming_transformer_state(vocab=N, block=16)
    gpt = load_taming_transformer(GPT(N, 16, num_classes=10, n_layer=2, n_head=4, n_embd=32).eval(),
                                  {"state_dict": {"transformer." + k: v for k, v in state.items()}}, 10)
    tok = state["tok_emb.weight"]
    assert torch.equal(gpt.cls_emb.weight[:10], tok[:10])
    assert torch.allclose(gpt.cls_emb.weight[10], tok[:10].mean(0))
    labels = torch.tensor([3, 7])
    x = tok[labels] + state["pos_emb"][0, 0]  # the class id is a token of tok_emb, no offset
    for i in range(2):  # one position: attention returns its own value
        s = {k.split(".", 2)[2]: v for k, v in state.items() if k.startswith(f"blocks.{i}.")}
        a = F.layer_norm(x, (32,), s["ln1.weight"], s["ln1.bias"])
        x = x + F.linear(F.linear(a, s["attn.value.weight"], s["attn.value.bias"]), s["attn.proj.weight"],
                         s["attn.proj.bias"])
        m = F.layer_norm(x, (32,), s["ln2.weight"], s["ln2.bias"])
        x = x + F.linear(F.gelu(F.linear(m, s["mlp.0.weight"], s["mlp.0.bias"])), s["mlp.2.weight"], s["mlp.2.bias"])
    expected = F.linear(F.layer_norm(x, (32,), state["ln_f.weight"], state["ln_f.bias"]), state["head.weight"])
    logits = gpt(torch.randint(0, N, (2, 16)), labels)[:, 0]
    assert torch.allclose(logits, expected, atol=1e-5)


def test_taming_transformer_refuses_mismatches():
    state = taming_transformer_state(vocab=N, block=16)
    gpt = GPT(N, 16, num_classes=10, n_layer=2, n_head=4, n_embd=32)
    bad = dict(state, **{"blocks.1.attn.mask": torch.ones(1, 1, 16, 16)})
    with pytest.raises(ValueError, match="not a causal mask"):
        load_taming_transformer(gpt, bad, 10)
    with pytest.raises(ValueError, match=r"missing: blocks\.1\.mlp\.2\.bias"):
        load_taming_transformer(gpt, {k: v for k, v in state.items() if k != "blocks.1.mlp.2.bias"}, 10)
    with pytest.raises(ValueError, match=r"pos_emb: file \(1, 16, 32\) vs model \(1, 17, 32\)"):
        load_taming_transformer(GPT(N, 17, num_classes=10, n_layer=2, n_head=4, n_embd=32), state, 10)
    with pytest.raises(ValueError, match="num_classes=10"):
        load_taming_transformer(GPT(N, 16, num_classes=5, n_layer=2, n_head=4, n_embd=32), state, 10)


# -- configs ---------------------------------------------------------------------------------------------------

SMALL = {
    "llamagen_vq16": ["tokenizer.ch=32", "tokenizer.num_res_blocks=1", "tokenizer.z_channels=16"],
    "llamagen_vq8": ["tokenizer.ch=32", "tokenizer.num_res_blocks=1", "tokenizer.z_channels=16"],
    "taming_vqgan": ["tokenizer.ddconfig.ch=32", "tokenizer.ddconfig.num_res_blocks=1",
                     "tokenizer.ddconfig.z_channels=16", "tokenizer.ddconfig.resolution=32",
                     "tokenizer.ddconfig.attn_resolutions=[2]", "tokenizer.embed_dim=8"],
    "ibq": ["tokenizer.ddconfig.ch=32", "tokenizer.ddconfig.num_res_blocks=1", "tokenizer.ddconfig.z_channels=16",
            "tokenizer.ddconfig.resolution=32", "tokenizer.ddconfig.attn_resolutions=[2]", "tokenizer.embed_dim=8"],
}
RELEASED = {"llamagen_vq16": 16384, "llamagen_vq8": 16384, "taming_vqgan": 16384, "ibq": 262144}


def small_model(option, t):
    if option == "ibq":
        return IBQ(t["ddconfig"], N, 8, use_ema=True)
    if option == "taming_vqgan":
        return TamingVQGAN(t["ddconfig"], N, 8)
    return LlamaGenVQ(32, N, t["codebook_embed_dim"], True, t["ch"], t["ch_mult"], t["num_res_blocks"],
                      t["z_channels"])


@pytest.mark.parametrize("option", sorted(SMALL))
def test_yaml_composes_with_the_released_settings(option):
    cfg = compose_config([f"tokenizer={option}"])
    assert OmegaConf.is_missing(cfg.tokenizer, "checkpoint")
    assert cfg.tokenizer.codebook_size == RELEASED[option] == cfg.policy.vocab_size
    assert cfg.tokenizer._target_.startswith("rlar.tokenizer.zoo_build.build_")


@pytest.mark.parametrize("option", sorted(SMALL))
def test_yaml_instantiates_a_frozen_tokenizer(tmp_path, option):
    overrides = [f"tokenizer={option}", "tokenizer.image_size=32", f"tokenizer.codebook_size={N}", *SMALL[option]]
    cfg = compose_config(overrides)
    with torch.device("meta"):  # the architecture the config names, to save a file that fits it
        model = small_model(option, OmegaConf.to_container(cfg.tokenizer))
    state = random_state(shapes(model))
    path = tmp_path / "weights.ckpt"
    torch.save({"model": state} if "llamagen" in option else {"state_dict": state}, path)
    tok = instantiate(compose_config([*overrides, f"tokenizer.checkpoint={path}"]).tokenizer, data=None)
    assert isinstance(tok, FrozenTokenizer) and tok.codebook_size == N and tok.source == str(path)
    grid = {"llamagen_vq8": (4, 4)}.get(option, (2, 2))
    assert tok.grid == grid
    assert tok.decode_code(tok.encode_indices(IMAGES[:2])).shape == (2, 3, 32, 32)


def test_policy_gpt_config_loads_taming_rlar_and_rl_checkpoints(tmp_path):
    from rlar.policy.prior import load_gpt_checkpoint

    torch.manual_seed(0)
    source = GPT(vocab_size=32, block_size=16, num_classes=4, n_layer=1, n_head=2, n_embd=16)
    taming = {k: v for k, v in source.state_dict().items() if k != "cls_emb.weight"}
    taming["blocks.0.attn.mask"] = torch.ones(16, 16).tril().view(1, 1, 16, 16)
    files = {"taming.ckpt": {"state_dict": {f"transformer.{k}": v for k, v in taming.items()}},
             "plain.pt": source.state_dict(), "rl.pt": {"policy": source.state_dict(), "iteration": 3}}
    for name, content in files.items():
        torch.save(content, tmp_path / name)
        target = load_gpt_checkpoint(GPT(vocab_size=32, block_size=16, num_classes=4, n_layer=1, n_head=2,
                                         n_embd=16), str(tmp_path / name))
        assert torch.equal(target.tok_emb.weight, source.tok_emb.weight), name
    assert torch.equal(target.cls_emb.weight, source.cls_emb.weight)
    broken = source.state_dict()
    broken["head.weight"] = broken["head.weight"][:, :8]
    torch.save(broken, tmp_path / "broken.pt")
    with pytest.raises(ValueError, match="head.weight"):
        load_gpt_checkpoint(GPT(vocab_size=32, block_size=16, num_classes=4, n_layer=1, n_head=2, n_embd=16),
                            str(tmp_path / "broken.pt"))
