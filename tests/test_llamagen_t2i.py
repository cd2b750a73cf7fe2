"""LlamaGen-T2I: the released T2I checkpoints' layout (the caption embedder ``cls_embedding.cap_proj.{fc1,fc2}`` and
the null caption ``cls_embedding.uncond_embedding``, no class table) loads strictly, a wrong key is named, the
released sizes have the reference shapes, the builder reads the text encoder's width and length, and the
``llamagen_t2i`` recipe composes with the command of its header."""

import argparse
import re
from types import SimpleNamespace

import pytest
import torch
from hydra.utils import instantiate

from rlar.config.store import CONF_DIR, compose_config
from rlar.config.validate import check_config
from rlar.policy.conditioning import Condition
from rlar.policy.llamagen import LlamaGen, load_llamagen_state
from rlar.policy.llamagen_build import build_llamagen_prior
from rlar.text.hf_encoders import T5TextEncoder

VOCAB, DIM, HIDDEN, CAPTION, TOKENS = 16, 32, 96, 24, 6


def t2i_state(n_layer: int = 2, caption: int = CAPTION) -> dict:
    """The key names and shapes of LlamaGen's t2i ``Transformer.state_dict()`` at tiny sizes (no freqs_cis: not a
    buffer there; ``uncond_embedding`` is a buffer there, so it is saved)."""
    state = {"cls_embedding.cap_proj.fc1.weight": (DIM, caption), "cls_embedding.cap_proj.fc2.weight": (DIM, DIM),
             "cls_embedding.uncond_embedding": (TOKENS, caption), "tok_embeddings.weight": (VOCAB, DIM),
             "norm.weight": (DIM,), "output.weight": (VOCAB, DIM)}
    for i in range(n_layer):
        state |= {f"layers.{i}.attention.wqkv.weight": (3 * DIM, DIM), f"layers.{i}.attention.wo.weight": (DIM, DIM),
                  f"layers.{i}.feed_forward.w1.weight": (HIDDEN, DIM),
                  f"layers.{i}.feed_forward.w3.weight": (HIDDEN, DIM),
                  f"layers.{i}.feed_forward.w2.weight": (DIM, HIDDEN),
                  f"layers.{i}.attention_norm.weight": (DIM,), f"layers.{i}.ffn_norm.weight": (DIM,)}
    return {k: torch.randn(shape, generator=torch.Generator().manual_seed(len(k))) for k, shape in state.items()}


def t2i_model(**kwargs) -> LlamaGen:
    return LlamaGen(VOCAB, 16, 0, n_layer=2, n_head=2, dim=DIM, multiple_of=32, caption_dim=CAPTION,
                    cls_token_num=TOKENS, **kwargs)


def test_the_model_has_exactly_the_t2i_layout():
    reference = t2i_state()
    ours = t2i_model().state_dict()
    assert sorted(ours) == sorted(reference)
    assert all(ours[k].shape == v.shape for k, v in reference.items())


@pytest.mark.parametrize("wrapper", ["model", None])
def test_a_t2i_checkpoint_loads_strictly(tmp_path, wrapper):
    state = t2i_state()
    checkpoint = {"model": state, "steps": 5, "args": argparse.Namespace(gpt_type="t2i")} if wrapper else \
        {**state, "freqs_cis": torch.zeros(TOKENS + 16, 8, 2)}
    torch.save(checkpoint, tmp_path / "t2i.pt")
    model = load_llamagen_state(t2i_model(), tmp_path / "t2i.pt")
    for key in ("cls_embedding.cap_proj.fc1.weight", "cls_embedding.uncond_embedding", "layers.1.attention.wo.weight"):
        assert torch.equal(model.state_dict()[key], state[key])
    # the loaded null caption is what a null row reads: it equals spelling the embedding out as features
    tokens = torch.randint(0, VOCAB, (1, 16))
    features = torch.randn(1, TOKENS, CAPTION)
    mask = torch.ones(1, TOKENS, dtype=torch.bool)
    with torch.no_grad():
        null = model(tokens, Condition(None, features, mask, torch.ones(1, dtype=torch.bool)))
        spelled = model(tokens, Condition.of_text(state["cls_embedding.uncond_embedding"][None], mask))
    assert torch.allclose(null, spelled, atol=1e-6)


def test_a_class_checkpoint_in_a_t2i_model_names_every_key():
    state = t2i_state()
    for key in [k for k in state if k.startswith("cls_embedding.")]:
        state.pop(key)
    state["cls_embedding.embedding_table.weight"] = torch.zeros(1001, DIM)
    message = ("missing: cls_embedding.uncond_embedding, cls_embedding.cap_proj.fc1.weight, "
               "cls_embedding.cap_proj.fc2.weight\n  unexpected: cls_embedding.embedding_table.weight")
    with pytest.raises(ValueError, match=re.escape(message)) as err:
        load_llamagen_state(t2i_model(), state)
    assert "a t2i checkpoint (cls_embedding.cap_proj.*) needs a text_encoder" in str(err.value)


def test_a_caption_width_or_length_mismatch_names_the_shape():
    state = t2i_state()
    state["cls_embedding.cap_proj.fc1.weight"] = torch.zeros(DIM, 2048)
    state["cls_embedding.uncond_embedding"] = torch.zeros(120, 2048)
    with pytest.raises(ValueError, match=re.escape("cls_embedding.cap_proj.fc1.weight: file "
                                                   f"(32, 2048) vs model (32, {CAPTION})")):
        load_llamagen_state(t2i_model(), state)


def test_released_t2i_xl_shapes():
    with torch.device("meta"):  # GPT-XL at 256 px: 16x16 tokens, FLAN-T5-XL features, 120 caption tokens
        model = LlamaGen(16384, 256, 0, size="GPT-XL", caption_dim=2048, cls_token_num=120)
    state = model.state_dict()
    assert state["cls_embedding.cap_proj.fc1.weight"].shape == (1280, 2048)
    assert state["cls_embedding.cap_proj.fc2.weight"].shape == (1280, 1280)
    assert state["cls_embedding.uncond_embedding"].shape == (120, 2048)
    assert model.freqs_cis.shape == (120 + 256, 32, 2) and model.sequence_len == 120 + 255
    assert len([k for k in state if k.endswith("attention.wqkv.weight")]) == 36


def test_builder_reads_the_text_encoders_width_and_length(tiny_t5, tmp_path):
    path, _ = tiny_t5
    encoder = T5TextEncoder(str(path), max_length=TOKENS)
    tokenizer = SimpleNamespace(codebook_size=VOCAB, num_tokens=16)  # what the builder reads of a tokenizer
    data = SimpleNamespace(num_classes=0)
    state = t2i_state(caption=encoder.dim)
    torch.save({"model": state}, tmp_path / "t2i.pt")
    policy = build_llamagen_prior(tokenizer, data, encoder, vocab_size=VOCAB, n_layer=2, n_head=2, dim=DIM,
                                  multiple_of=32, checkpoint=str(tmp_path / "t2i.pt"))
    assert (policy.caption_dim, policy.cond_len) == (16, TOKENS)
    assert torch.equal(policy.cls_embedding.uncond_embedding, state["cls_embedding.uncond_embedding"])
    with pytest.raises(ValueError, match="policy.cls_token_num=7 but text_encoder.max_length=6"):
        build_llamagen_prior(tokenizer, data, encoder, vocab_size=VOCAB, cls_token_num=7)


def test_the_recipe_composes_with_the_command_of_its_header(tiny_t5, tmp_path):
    header = (CONF_DIR / "experiment" / "llamagen_t2i.yaml").read_text()
    command = " ".join(line.lstrip("#").strip().rstrip("\\") for line in header.splitlines()
                       if line.startswith("#   ") or line.startswith("#       "))
    assert command.startswith("torchrun --nproc_per_node=8 -m rlar.run experiment=llamagen_t2i")
    overrides = command.split("rlar.run ", 1)[1].split()
    files = {"tokenizer.checkpoint": tmp_path / "vq.pt", "policy.checkpoint": tmp_path / "t2i.pt"}
    for file in files.values():
        file.write_bytes(b"")
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("".join(f"a photo of {n} cats\n" for n in range(20)))
    mine = {**{k: str(v) for k, v in files.items()}, "text_encoder.model_path": str(tiny_t5[0]),
            "data.path": str(prompts)}
    overrides = [f"{o.split('=')[0]}={mine[o.split('=')[0]]}" if o.split("=")[0] in mine else o for o in overrides]
    cfg = compose_config(overrides)
    assert cfg.hardware.strategy == "fsdp"
    check_config(compose_config([*overrides, "hardware.device=cpu", "hardware.strategy=none"]))  # no torchrun here
    assert cfg.policy.size == "GPT-XL" and cfg.policy.cls_token_num == 120 and cfg.text_encoder.max_length == 120
    assert cfg.text_encoder._target_.endswith("T5TextEncoder") and cfg.rollout.cfg_scale > 1
    assert cfg.tokenizer.image_size == 256
    assert instantiate(cfg.algorithm).num_generations == cfg.algorithm.num_generations
    data = instantiate(cfg.data)  # the prompts are the captions the policy reads
    assert data.train_images is None and len(data.train_captions) == 18 and data.train_captions[0].startswith("a photo")
