import torch

from rlar.data.digits import DigitsData
from rlar.tokenizer.digits_vq import DigitsVQ, psnr, train_digits_vq
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
        before = psnr(model.decode_code(model.encode_indices(images)), images)
    train_digits_vq(model, data.train_images, 60, 3e-3, 32, torch.Generator().manual_seed(0))
    with torch.no_grad():
        after = psnr(model.decode_code(model.encode_indices(images)), images)
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
