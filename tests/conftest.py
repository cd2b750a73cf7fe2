import subprocess

import matplotlib.font_manager  # noqa: F401  on a fresh machine it runs fc-list once to cache the fonts: before the guard
import numpy as np
import pytest
import torch
from sklearn.datasets import load_digits
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

import rlar.loop
from rlar.policy.gpt import GPT
from rlar.runtime.cache import seeded


@pytest.fixture(autouse=True)
def no_subprocess_in_the_fast_tier(request, monkeypatch):
    """The fast tier (``-m "not slow"``) starts no process: outside a test marked slow, ``subprocess.Popen`` (and so
    ``subprocess.run``) raises."""
    if request.node.get_closest_marker("slow") is not None:
        return

    def refuse(self, args, *rest, **kwargs):
        raise RuntimeError(f"mark this test slow: it starts a subprocess ({args!r}); "
                           "the fast tier (pytest -m 'not slow') starts none")

    monkeypatch.setattr(subprocess.Popen, "__init__", refuse)


@pytest.fixture(scope="session")
def cache_dir(tmp_path_factory):
    """One cache for the whole session: the tiny tokenizer and prior are trained once."""
    return tmp_path_factory.mktemp("rlar-cache")


@pytest.fixture(scope="session")
def tiny(cache_dir):
    """Overrides for a seconds-long run of the embedded default."""
    return [
        f"cache_dir={cache_dir}",
        "tokenizer.train.steps=40",
        "policy.pretrain.steps=40",
        "train.iterations=2",
        "train.batch_size=4",
        "train.checkpoint_every=1",
        "algorithm.num_generations=4",
        "algorithm.minibatch_size=8",
        "eval.max_items=8",
        "eval.every=2",
        "eval.classifier_model.train.steps=20",  # the evaluation classifier: briefly trained (the default trains 300)
        "logger.image_every=1",
    ]


@pytest.fixture(scope="session")
def tiny_cca(tiny):
    """``tiny`` with algorithm=cca (without the sampling algorithms' settings): 2 images per forward pass, 2 samples
    per held-out image."""
    return [o for o in tiny if not o.startswith("algorithm.")] + ["algorithm=cca", "algorithm.minibatch_size=2",
                                                                   "eval.samples_per_item=2"]


@pytest.fixture
def stop_after_two_updates():
    """``stop(patch, name)``: under the monkeypatch context ``patch``, ``rlar.loop.<name>`` (the loop's update step)
    raises KeyboardInterrupt when it is called the third time, so the run stops after two saved iterations."""

    def stop(patch, name):
        calls = []
        real_update = getattr(rlar.loop, name)

        def update(*args, **kwargs):
            calls.append(1)
            if len(calls) == 3:
                raise KeyboardInterrupt("stopped by the test")
            return real_update(*args, **kwargs)

        patch.setattr(rlar.loop, name, update)

    return stop


@pytest.fixture
def tb_scalars():
    """``read(run_dir, tag) -> [values]``: a run's TensorBoard scalars, read back with TensorBoard's own reader."""

    def read(run_dir, tag):
        events = EventAccumulator(str(run_dir / "tensorboard"))
        events.Reload()
        return [e.value for e in events.Scalars(tag)]

    return read


@pytest.fixture
def gpt():
    torch.manual_seed(0)
    return GPT(vocab_size=32, block_size=12, num_classes=5, n_layer=2, n_head=2, n_embd=32).eval()


@pytest.fixture(scope="session")
def inception_weights(tmp_path_factory):
    """A weights file in torch-fidelity's Inception-v3 layout (what ``eval.inception.weights`` reads), randomly
    initialised, nothing downloaded: its BatchNorm statistics are set by one pass over random images, so that the
    features are of order 1."""
    import torch_fidelity.feature_extractor_inceptionv3 as inception_module

    with pytest.MonkeyPatch.context() as patch:  # the constructor downloads and loads the released weights
        patch.setattr(inception_module, "load_state_dict_from_url", lambda *args, **kwargs: None)
        patch.setattr(inception_module.FeatureExtractorInceptionV3, "load_state_dict", lambda self, state: None)
        torch.manual_seed(0)
        net = inception_module.FeatureExtractorInceptionV3("inception-v3-compat", ["2048"])
    for module in net.modules():
        if isinstance(module, torch.nn.modules.batchnorm._BatchNorm):
            module.momentum = None  # running statistics = the mean over the pass
    noise = torch.randint(0, 256, (8, 3, 32, 32), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        net.train()(noise)
    path = tmp_path_factory.mktemp("inception") / "random_inception.pth"
    torch.save(net.eval().state_dict(), path)
    return path


@pytest.fixture(scope="session")
def digit_pixels():
    """``take(n) -> (pixels, labels)``: the first n digits as uint8 ``[n, 32, 32]`` (8x8 upscaled 4x by repetition)
    and their labels ``[n]`` int64, as image files of a test data set would hold them."""

    def take(n: int) -> tuple[np.ndarray, np.ndarray]:
        d = load_digits()
        pixels = (d.images[:n] * 16).clip(0, 255).astype(np.uint8).repeat(4, axis=1).repeat(4, axis=2)
        return pixels, d.target[:n].astype(np.int64)

    return take


CAPTION_WORDS = ["a", "the", "thick", "thin", "digit", "leaning", "left", "right", "upright", "zero", "one", "two",
                 "three", "four", "five", "six", "seven", "eight", "nine"]


def word_tokenizer(specials: list[str], post: str):
    """A word-level ``PreTrainedTokenizerFast`` over ``specials`` then ``CAPTION_WORDS``, built offline; ``post``:
    the template a caption is encoded with (``$A`` is its words)."""
    import transformers
    from tokenizers import Tokenizer, models, pre_tokenizers, processors

    vocab = {w: i for i, w in enumerate([*specials, *CAPTION_WORDS])}
    tokenizer = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tokenizer.pre_tokenizer = pre_tokenizers.Whitespace()
    tokenizer.post_processor = processors.TemplateProcessing(
        single=post, special_tokens=[(t, vocab[t]) for t in specials if t in post])
    return transformers.PreTrainedTokenizerFast(tokenizer_object=tokenizer, pad_token="<pad>", unk_token="<unk>"), vocab


def saved_random_model(path, model_class, config, tokenizer):
    """``model_class(config)`` initialised under seed 0 (the tests' random state untouched), saved with
    ``tokenizer`` as a local model folder at ``path``: ``(path, model)``."""
    with seeded(0):
        model = model_class(config).eval()
    model.save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path, model


@pytest.fixture(scope="session")
def tiny_t5(tmp_path_factory):
    """A randomly initialised T5 encoder (width 16, 2 layers) and a word-level tokenizer ending captions with
    ``</s>``, saved as a local model folder: ``(path, model)``."""
    transformers = pytest.importorskip("transformers")
    tokenizer, vocab = word_tokenizer(["<pad>", "</s>", "<unk>"], "$A </s>")
    config = transformers.T5Config(vocab_size=len(vocab), d_model=16, d_kv=4, d_ff=32, num_layers=2, num_heads=4,
                                   pad_token_id=0, eos_token_id=1, decoder_start_token_id=0)
    return saved_random_model(tmp_path_factory.mktemp("t5"), transformers.T5EncoderModel, config, tokenizer)


@pytest.fixture(scope="session")
def tiny_clip_text(tmp_path_factory):
    """A randomly initialised CLIP text tower (width 16, 2 layers, 12 positions) with a word-level tokenizer
    framing captions with ``<s>`` and ``</s>``: ``(path, model)``."""
    transformers = pytest.importorskip("transformers")
    tokenizer, vocab = word_tokenizer(["<pad>", "<s>", "</s>", "<unk>"], "<s> $A </s>")
    config = transformers.CLIPTextConfig(vocab_size=len(vocab), hidden_size=16, intermediate_size=32,
                                         num_hidden_layers=2, num_attention_heads=2, max_position_embeddings=12,
                                         pad_token_id=0, bos_token_id=1, eos_token_id=2)
    return saved_random_model(tmp_path_factory.mktemp("clip_text"), transformers.CLIPTextModel, config, tokenizer)
