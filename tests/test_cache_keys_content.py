"""Cache keys follow content, not names: a text encoder's folder is keyed by its config, tokenizer files and
sampled weight bytes; a tokenizer checkpoint by its bytes (the same file at any path keeps its key, one overwritten
in place gets a new one). The prior's eval loss after pretraining runs in batches, with the mean of one pass."""

import json
import shutil
from types import SimpleNamespace

import pytest
import torch
from safetensors.torch import save_file

import rlar.policy.prior
from rlar.policy.arpg import ARPG
from rlar.policy.gpt import GPT
from rlar.policy.prior import cached_prior, teacher_forced_ce
from rlar.runtime.cache import source_key
from rlar.text.embedded import EmbeddedTextEncoder
from rlar.text.hf_encoders import model_fingerprint

# ---- a Hugging Face model folder ----

def model_folder(path, seed: int, numel: int = 1 << 21):
    """A folder like a Hugging Face model's: config.json, a tokenizer file and ``model.safetensors`` holding a random
    tensor of ``numel`` floats (8 MiB by default: sampled, not read whole)."""
    path.mkdir(parents=True)
    (path / "config.json").write_text(json.dumps({"model_type": "t5", "d_model": 8}))
    (path / "tokenizer.json").write_text(json.dumps({"vocab": ["a", "b"]}))
    generator = torch.Generator().manual_seed(seed)
    save_file({"weight": torch.randn(numel, generator=generator)}, path / "model.safetensors")
    return path


def test_two_fine_tunes_of_the_same_size_have_other_fingerprints(tmp_path):
    one, other = model_folder(tmp_path / "one", seed=0), model_folder(tmp_path / "other", seed=1)
    assert (one / "model.safetensors").stat().st_size == (other / "model.safetensors").stat().st_size
    assert model_fingerprint(one) != model_fingerprint(other)


def test_weights_overwritten_in_place_change_the_fingerprint(tmp_path):
    folder = model_folder(tmp_path / "model", seed=0)
    before = model_fingerprint(folder)
    save_file({"weight": torch.zeros(1 << 21)}, folder / "model.safetensors")
    zeros = model_fingerprint(folder)
    weights = torch.zeros(1 << 21)
    weights[-1] = 1.0  # one float changed, in the last sample
    save_file({"weight": weights}, folder / "model.safetensors")
    assert len({before, zeros, model_fingerprint(folder)}) == 3


def test_a_tokenizer_file_enters_the_fingerprint(tmp_path):
    folder = model_folder(tmp_path / "model", seed=0)
    before = model_fingerprint(folder)
    (folder / "tokenizer.json").write_text(json.dumps({"vocab": ["a", "c"]}))
    assert model_fingerprint(folder) != before


def test_a_copied_model_folder_keeps_its_fingerprint(tmp_path):
    folder = model_folder(tmp_path / "model", seed=0)
    copy = shutil.copytree(folder, tmp_path / "elsewhere" / "copy")
    assert model_fingerprint(copy) == model_fingerprint(folder)


# ---- a tokenizer checkpoint ----

def save_checkpoint(path, seed: int):
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save({"codebook": torch.randn(64, 8, generator=torch.Generator().manual_seed(seed))}, path)
    return path


def test_a_checkpoint_overwritten_in_place_gets_a_new_key(tmp_path):
    path = save_checkpoint(tmp_path / "checkpoints" / "vq.pt", seed=0)
    before = source_key(str(path), tmp_path / "cache")
    save_checkpoint(path, seed=1)
    assert source_key(str(path), tmp_path / "cache") != before


def test_a_checkpoint_keeps_its_key_at_another_path(tmp_path):
    path = save_checkpoint(tmp_path / "checkpoints" / "vq.pt", seed=0)
    copy = shutil.copy(path, tmp_path / "elsewhere.pt")
    assert source_key(str(copy), tmp_path / "cache") == source_key(str(path), tmp_path / "cache")


def test_the_same_relative_path_in_other_folders_is_another_key(tmp_path, monkeypatch):
    save_checkpoint(tmp_path / "a" / "vq.pt", seed=0)
    save_checkpoint(tmp_path / "b" / "vq.pt", seed=1)
    monkeypatch.chdir(tmp_path / "a")
    here = source_key("vq.pt", tmp_path / "cache")
    monkeypatch.chdir(tmp_path / "b")
    assert source_key("vq.pt", tmp_path / "cache") != here


def test_the_ema_weights_of_a_checkpoint_are_their_own_key_and_follow_its_content(tmp_path):
    path = save_checkpoint(tmp_path / "ibq.ckpt", seed=0)
    copy = shutil.copy(path, tmp_path / "copy.ckpt")
    ema = source_key(f"{path} (EMA weights)", tmp_path / "cache")
    assert ema != source_key(str(path), tmp_path / "cache") and ema.endswith(" (EMA weights)")
    assert source_key(f"{copy} (EMA weights)", tmp_path / "cache") == ema


# ---- the prior's eval loss ----

class Counted:
    """Wraps a policy's forward, recording the rows of each call."""

    def __init__(self, policy):
        self.forward, self.rows = policy.forward, []

    def __call__(self, codes, *args, **kwargs):
        self.rows.append(len(codes))
        return self.forward(codes, *args, **kwargs)


def test_the_prior_eval_loss_runs_in_pretraining_batches_with_the_mean_of_one_pass(tmp_path, monkeypatch):
    generator = torch.Generator().manual_seed(0)
    train, held_out = torch.randint(16, (12, 4), generator=generator), torch.randint(16, (10, 4), generator=generator)
    data = SimpleNamespace(train_images=train, train_labels=torch.arange(12) % 3, eval_images=held_out,
                           eval_labels=torch.arange(10) % 3, fingerprint=lambda: {"name": "codes"})
    tokenizer = SimpleNamespace(encode_indices=lambda images: images, source="codes")  # the images are the codes
    monkeypatch.setattr(rlar.policy.prior, "pretrain_gpt", lambda *args, **kwargs: [0.0])  # the initial weights
    policy = GPT(vocab_size=16, block_size=4, num_classes=3, n_layer=1, n_head=2, n_embd=16).eval()
    with torch.no_grad():
        one_pass = teacher_forced_ce(policy, held_out, data.eval_labels).item()
    counted = Counted(policy)
    monkeypatch.setattr(policy, "forward", counted)
    pretrain = {"steps": 1, "seed": 0, "lr": 1e-3, "batch_size": 4, "label_dropout": 0.1}
    cached_prior(policy, "gpt_prior", {"n": 1}, tokenizer, data, pretrain, str(tmp_path))
    assert counted.rows == [4, 4, 2]
    metrics = json.loads(next(tmp_path.glob("gpt_prior-*.json")).read_text())["metrics"]
    assert metrics["eval_loss"] == pytest.approx(one_pass, rel=1e-6)



def test_a_prior_that_draws_as_it_is_judged_leaves_the_caller_s_random_state_as_a_cache_hit_does(tmp_path):
    """ARPG's eval loss draws its orders: a run that pretrains the prior must go on from the random state a run that
    loads it has (the schedule network's and the critic's initial weights are drawn next)."""
    generator = torch.Generator().manual_seed(0)
    codes = torch.randint(16, (10, 4), generator=generator)
    data = SimpleNamespace(train_images=codes[:6], train_labels=torch.arange(6) % 3, eval_images=codes[6:],
                           eval_labels=torch.arange(4) % 3, fingerprint=lambda: {"name": "codes"})
    tokenizer = SimpleNamespace(encode_indices=lambda images: images, source="codes")  # the images are the codes
    pretrain = {"steps": 2, "seed": 0, "lr": 1e-3, "batch_size": 4, "label_dropout": 0.1}
    after = []
    for _ in ("miss", "hit"):
        policy = ARPG(16, 4, 3, n_layer=2, n_head=2, dim=16, multiple_of=16)
        torch.manual_seed(7)
        cached_prior(policy, "arpg_prior", {"n": 1}, tokenizer, data, pretrain, str(tmp_path))
        after.append(torch.rand(3))
    assert len(list(tmp_path.glob("arpg_prior-*.pt"))) == 1 and torch.equal(after[0], after[1])

def test_the_chunked_eval_loss_of_a_text_prior_is_that_of_one_pass():
    torch.manual_seed(0)
    encoder = EmbeddedTextEncoder(max_length=6, width=8, n_layer=1, n_head=2).eval()
    policy = GPT(vocab_size=16, block_size=4, n_layer=1, n_head=2, n_embd=16, caption_dim=8,
                 condition_tokens=6).eval()
    codes, labels = torch.randint(16, (7, 4)), torch.arange(7) % 3
    captions = ["one", "two", "a thick seven", "three", "nine", "zero", "the digit four"]
    with torch.no_grad():
        one_pass = teacher_forced_ce(policy, codes, encoder.condition(captions, labels)).item()
    assert rlar.policy.prior.eval_ce(policy, codes, labels, 3, captions, encoder) == pytest.approx(one_pass, rel=1e-6)
