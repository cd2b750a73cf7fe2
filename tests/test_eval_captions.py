"""Evaluation with captions: the eval prompts reach the reward, eval/attr/* measure what they ask of the samples,
and the other numbers are those of the same evaluation without captions."""

import pytest
import torch
from omegaconf import OmegaConf

from rlar.contracts import Reward
from rlar.data.captions import caption_checks, parse_caption
from rlar.data.digits import DigitsData
from rlar.eval.evaluate import evaluate, headline
from rlar.eval.model.classifier import DigitsClassifier
from rlar.eval.model.scorer import EvalModel, train_features
from rlar.policy.gpt import GPT
from rlar.rollout.sampling import cfg_scales
from rlar.tokenizer.digits_vq import DigitsVQ
from rlar.tokenizer.frozen import FrozenTokenizer

ITEMS, K = 10, 2
EVAL = OmegaConf.create({"seed": 3, "max_items": ITEMS, "samples_per_item": K, "batch_size": 4,
                         "guided_cfg_scale": None})


class Recording(Reward):
    """The mean ink of each sample (a real score), recording what it was called with."""

    def __init__(self):
        self.calls = []

    def __call__(self, images, targets=None, meta=None):
        self.calls.append((images, meta))
        score = images.float().flatten(1).mean(1)
        return score, {"ink": score}


@pytest.fixture(scope="module")
def parts():
    torch.manual_seed(0)
    tokenizer = FrozenTokenizer(DigitsVQ(codebook_size=16, hidden=16))
    policy = GPT(vocab_size=16, block_size=64, num_classes=10, n_layer=1, n_head=2, n_embd=32).eval()
    classifier = DigitsClassifier().eval()
    classifier.metrics = {"eval_accuracy": float("nan")}  # untrained: its readings are arbitrary but fixed
    return tokenizer, policy, classifier


def run(parts, data, judge: bool = True):
    tokenizer, policy, classifier = parts
    eval_model = (EvalModel(classifier, data.eval_images[:ITEMS], data.eval_labels[:ITEMS], "cpu",
                            train_features(classifier, data, "cpu")) if judge else None)
    reward = Recording()
    sampling = {"temperature": 1.0, "cfg_scale": cfg_scales(64, 1.0)}
    return evaluate(policy, tokenizer, reward, data, EVAL, sampling, "cpu", eval_model=eval_model), reward, eval_model


def test_captions_add_eval_attr_and_change_nothing_else(parts):
    captioned, reward, eval_model = run(parts, DigitsData(captions="attributes"))
    plain, plain_reward, _ = run(parts, DigitsData())
    attr = {"eval/attr/class_acc", "eval/attr/thickness_acc", "eval/attr/slant_acc", "eval/attr/all_acc"}
    assert set(captioned) == set(plain) | attr and not any(k.startswith("eval/attr") for k in plain)
    assert {k: v for k, v in captioned.items() if k not in attr} == plain
    assert all("prompts" not in meta for _, meta in plain_reward.calls)
    assert headline(captioned, "after")["eval_attr_all_acc_after"] == captioned["eval/attr/all_acc"]


def test_eval_attr_is_the_fraction_of_checks_passed(parts):
    data = DigitsData(captions="attributes")
    result, reward, eval_model = run(parts, data)
    prompts = [p for _, meta in reward.calls for p in meta["prompts"]]
    assert prompts == [c for c in data.eval_captions[:ITEMS] for _ in range(K)]  # each item's, K times
    samples = torch.cat([images for images, _ in reward.calls])  # [ITEMS * K, 1, 32, 32]
    assert samples.min() >= -1 and samples.max() <= 1  # the decoded range the attributes are measured in
    seen = eval_model.classify(eval_model.describe(samples)[0])
    checks = caption_checks(samples, [parse_caption(p) for p in prompts], seen)
    for name in ("class", "thickness", "slant", "all"):
        assert result[f"eval/attr/{name}_acc"] == pytest.approx(float(checks[f"{name}_ok"].mean()))
    assert result["eval/attr/class_acc"] == pytest.approx(result["eval/class_acc"])  # the prompt's digit is the label


def test_without_the_judge_there_is_no_class_check(parts):
    result, _, _ = run(parts, DigitsData(captions="attributes"), judge=False)
    assert {k for k in result if k.startswith("eval/attr")} == {"eval/attr/thickness_acc", "eval/attr/slant_acc"}


def test_free_form_captions_reach_the_reward_without_eval_attr(parts):
    data = DigitsData()
    data.eval_captions = [f"a photo of the digit {k}" for k in data.eval_labels.tolist()]
    result, reward, _ = run(parts, data)
    assert not any(k.startswith("eval/attr") for k in result)
    assert reward.calls[0][1]["prompts"][:2] == [data.eval_captions[0]] * 2


def test_each_rank_gets_its_share_of_every_column(monkeypatch):
    from rlar.eval import evaluate as module

    monkeypatch.setattr(module.distributed, "world_size", lambda: 3)
    images, labels, prompts = torch.arange(7)[:, None].float(), torch.arange(7), [f"p{i}" for i in range(7)]
    shares = []
    for rank in range(3):
        monkeypatch.setattr(module.distributed, "rank", lambda rank=rank: rank)
        shares.append(module.rank_share(images, labels, prompts, None))
    assert [s[1].tolist() for s in shares] == [[0, 1, 2], [3, 4, 5], [6, 0, 1]]  # padded with the first items
    assert [s[2] for s in shares] == [["p0", "p1", "p2"], ["p3", "p4", "p5"], ["p6", "p0", "p1"]]
    assert all(torch.equal(s[0][:, 0].long(), s[1]) and s[3] is None for s in shares)
    assert [s[4].tolist() for s in shares] == [[True] * 3, [True] * 3, [True, False, False]]
