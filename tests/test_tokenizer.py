import torch

from rlar.data.digits import DigitsData
from rlar.reward.metrics import psnr
from rlar.tokenizer import build
from rlar.tokenizer.digits_vq import DigitsVQ, code_usage_perplexity, train_digits_vq
from rlar.tokenizer.frozen import FrozenTokenizer, build_tokenizer_frozen


def test_digits_data_shapes_range_and_fixed_split():
    a, b = DigitsData(), DigitsData()
    assert a.train_images.shape[1:] == (1, 32, 32)
    assert len(a.train_images) + len(a.eval_images) == 1797
    assert a.train_images.min() >= -1 and a.train_images.max() <= 1
    assert torch.equal(a.eval_labels, b.eval_labels)  # the held-out split does not move


def test_training_improves_reconstruction():
    data = DigitsData()
    model = DigitsVQ(codebook_size=16, hidden=16)
    images = data.eval_images[:64]
    with torch.no_grad():
        before = psnr(model.decode_code(model.encode_indices(images)), images).mean()
    train_digits_vq(model, data.train_images, 60, 3e-3, 32, torch.Generator().manual_seed(0))
    with torch.no_grad():
        after = psnr(model.decode_code(model.encode_indices(images)), images).mean()
    assert after > before + 3


def test_frozen_tokenizer_contract():
    tok = build_tokenizer_frozen(DigitsVQ(codebook_size=16, hidden=16))
    assert isinstance(tok, FrozenTokenizer)
    assert tok.codebook_size == 16 and tok.grid == (8, 8)
    assert not any(p.requires_grad for p in tok.parameters())
    tok.train()
    assert not tok.vq.training
    codes = tok.encode_indices(torch.rand(3, 1, 32, 32) * 2 - 1)
    assert codes.shape == (3, 64) and codes.dtype == torch.long
    images = tok.decode_code(codes)
    assert images.shape == (3, 1, 32, 32) and images.min() >= -1 and images.max() <= 1


def test_decode_refuses_out_of_range_codes():
    tok = build_tokenizer_frozen(DigitsVQ(codebook_size=16, hidden=16))
    try:
        tok.decode_code(torch.full((1, 64), 16))
    except ValueError as e:
        assert "[0, 15]" in str(e)
    else:
        raise AssertionError("a code outside the codebook was decoded")


class SplitReadInChunks:
    """The eval split of the digits, readable only a slice at a time (a stored split in fp32 is 4x its bytes)."""

    def __init__(self, images: torch.Tensor):
        self.images, self.eval_labels = images, torch.zeros(len(images), dtype=torch.long)

    @property
    def eval_images(self):
        raise AssertionError("the whole eval split was converted at once")

    def eval_images_of(self, items: slice) -> torch.Tensor:
        return self.images[items]


def test_the_tokenizers_quality_is_measured_a_chunk_at_a_time(monkeypatch):
    images = DigitsData().eval_images[:50]  # [50, 1, 32, 32]
    model = DigitsVQ(codebook_size=16, hidden=16).eval()
    with torch.no_grad():
        codes = model.encode_indices(images)
        mse = (model.decode_code(codes) - images).pow(2).mean((1, 2, 3))  # [50]
    whole = float((10 * torch.log10(4 / mse)).mean())  # each image's PSNR (range 2), then the mean
    monkeypatch.setattr(build, "QUALITY_CHUNK", 7)  # 8 chunks, the last of 1
    quality = build._quality(model, SplitReadInChunks(images))
    assert abs(quality["psnr_db"] - whole) < 1e-4
    assert abs(quality["code_perplexity"] - code_usage_perplexity(codes, 16)) < 1e-9
