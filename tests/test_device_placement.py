"""What a GPU run needs of the set-up that a CPU-only machine never exercises: the device is named with its index,
and a cache miss trains where the data is, before the models move to the run's device."""

import pytest
import torch
from hydra.utils import instantiate
from torch.cuda._utils import _get_device_index

from rlar.build import build_generator
from rlar.config.store import compose_config
from rlar.runtime.clock import phase_time
from rlar.runtime.hardware import Hardware
from rlar.tokenizer import frozen
from rlar.tokenizer.frozen import FrozenTokenizer, without_tf32


@pytest.fixture
def cuda_visible(monkeypatch):
    """``torch.cuda.is_available()`` answers True (nothing here touches the CUDA runtime)."""
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)


@pytest.mark.parametrize(("device", "strategy", "local_rank", "expected"), [
    ("cuda", "none", None, "cuda:0"),
    ("cuda:1", "none", None, "cuda:1"),
    ("cuda", "ddp", "3", "cuda:3"),
    ("cuda:2", "fsdp", "3", "cuda:2"),
    ("cpu", "none", None, "cpu"),
])
def test_a_gpu_is_named_with_its_index(cuda_visible, monkeypatch, device, strategy, local_rank, expected):
    if local_rank is not None:  # under torchrun
        for name, value in {"RANK": local_rank, "WORLD_SIZE": "4", "LOCAL_RANK": local_rank}.items():
            monkeypatch.setenv(name, value)
    assert Hardware(device=device, strategy=strategy).torch_device == torch.device(expected)


def test_one_gpu_named_for_every_torchrun_process_is_refused(cuda_visible, monkeypatch):
    for name, value in {"RANK": "1", "WORLD_SIZE": "2", "LOCAL_RANK": "1", "LOCAL_WORLD_SIZE": "2"}.items():
        monkeypatch.setenv(name, value)
    with pytest.raises(ValueError, match=r"device='cuda:0' puts every torchrun process .* hardware.device=cuda"):
        Hardware(device="cuda:0", strategy="ddp")
    assert Hardware(device="cuda", strategy="ddp").torch_device == torch.device("cuda", 1)


def test_torchrun_with_a_strategy_of_one_process_is_refused_and_a_cpu_ddp_is_the_fix_without_cuda(monkeypatch):
    """hardware=cpu under torchrun ran the whole job in each process (each then failed on the run dir's lock), and
    a torchrun hardware=ddp without CUDA was told to use hardware=cpu, that very setup."""
    for name, value in {"RANK": "0", "WORLD_SIZE": "2", "LOCAL_RANK": "0"}.items():
        monkeypatch.setenv(name, value)
    with pytest.raises(ValueError, match="hardware.strategy='none' runs one process, and torchrun started 2"):
        Hardware(device="cpu", strategy="none")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(ValueError, match="CUDA is not available; use hardware=ddp hardware.device=cpu "
                                         "hardware.precision=fp32"):
        Hardware(device="cuda", strategy="ddp")
    Hardware(device="cpu", strategy="ddp", precision="fp32")


def test_setup_picks_the_gpu_by_an_index_cuda_accepts(cuda_visible, monkeypatch):
    """``torch.cuda.set_device`` validates its argument as below and refuses a bare ``cuda`` (a GPU check found
    ``hardware=cuda`` stopping there); the stand-in validates without a GPU."""
    chosen = []
    monkeypatch.setattr(torch.cuda, "set_device", lambda device: chosen.append(_get_device_index(device)))
    with pytest.raises(ValueError, match="specified index"):
        torch.cuda.set_device(torch.device("cuda"))
    Hardware(device="cuda").setup()
    assert chosen == [0]


def test_a_cache_miss_trains_on_the_cpu_before_the_models_move(tiny, tmp_path, monkeypatch):
    """The prior is pretrained on the tokenizer's codes of the data (CPU tensors): a tokenizer already on the run's
    device would be handed CPU images, which a GPU refuses. Here the run's device is ``meta`` and every tokenizer
    call must find its images where its weights are."""
    encode = FrozenTokenizer.encode_indices

    def same_device_only(tokenizer, images):
        weights = next(tokenizer.parameters()).device
        assert images.device == weights, f"images on {images.device}, tokenizer on {weights}"
        return encode(tokenizer, images)

    monkeypatch.setattr(FrozenTokenizer, "encode_indices", same_device_only)
    cfg = compose_config([*tiny, f"cache_dir={tmp_path}", "tokenizer.train.steps=3", "policy.pretrain.steps=3"])
    tokenizer, policy, text_encoder = build_generator(cfg, instantiate(cfg.data), torch.device("meta"))
    assert len(list(tmp_path.glob("gpt_prior-*.pt"))) == 1  # pretrained here, on a miss
    assert {p.device.type for m in (tokenizer, policy) for p in m.parameters()} == {"meta"}
    assert text_encoder is None


def test_the_tokenizer_reads_and_writes_in_fp32_under_the_policys_bf16_autocast(tiny, monkeypatch):
    """``hardware.precision=bf16`` autocasts the rollout, whose context the tokenizer encodes: in bf16 its nearest-code
    argmins would flip, and the codes would differ from the fp32 ones the prior was trained on. (TF32, which flips
    them less often, is turned off by ``without_tf32`` on a GPU: tested below.)"""
    entered, real = [], frozen.without_tf32
    monkeypatch.setattr(frozen, "without_tf32", lambda device: entered.append(device) or real(device))
    cfg = compose_config(tiny)
    data = instantiate(cfg.data)
    tokenizer = instantiate(cfg.tokenizer, data=data)
    images = data.eval_images[:64]  # [64, C, H, W]
    codes = tokenizer.encode_indices(images)  # [64, T]
    decoded = tokenizer.decode_code(codes)  # [64, C, H, W]
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert torch.equal(tokenizer.encode_indices(images), codes)
        under_autocast = tokenizer.decode_code(codes)
    assert under_autocast.dtype == torch.float32 and torch.equal(under_autocast, decoded)
    assert entered == [images.device] * 2  # each encoding asked for IEEE fp32 on the images' device


def test_a_phase_on_a_gpu_is_timed_once_its_queued_kernels_ran(monkeypatch):
    """CUDA kernels run asynchronously: a phase's clock waits for its device, else the next phase is charged."""
    waited = []
    monkeypatch.setattr(torch.cuda, "synchronize", lambda device=None: waited.append(device))
    before = phase_time("cpu")
    assert waited == []
    assert phase_time(torch.device("cuda", 1)) >= before and waited == [torch.device("cuda", 1)]


def test_tf32_is_off_while_a_gpu_tokenizer_encodes_and_restored_after():
    """``hardware.tf32`` turns TF32 on for the policy; the nearest-code argmins need IEEE fp32 (the flags are plain
    settings: no GPU needed to read them)."""
    saved = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = True
    try:
        with without_tf32(torch.device("cpu")):
            assert torch.backends.cuda.matmul.allow_tf32 and torch.backends.cudnn.allow_tf32  # nothing to do there
        with pytest.raises(RuntimeError, match="inside"), without_tf32(torch.device("cuda", 0)):
            assert not torch.backends.cuda.matmul.allow_tf32 and not torch.backends.cudnn.allow_tf32
            raise RuntimeError("inside")
        assert torch.backends.cuda.matmul.allow_tf32 and torch.backends.cudnn.allow_tf32
    finally:
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = saved
