"""The Condition type: rows, repeats, the null condition of guidance and dropout, checked values by hand; the mask
over padded condition tokens; and the errors a policy gives for the wrong kind of condition."""

import pytest
import torch

from rlar.policy.condition_mask import attention_mask, key_valid
from rlar.policy.conditioning import Condition, as_condition, class_ids, text_condition
from rlar.policy.gpt import GPT
from rlar.rollout.collect import drop_labels
from rlar.rollout.sampling import with_null_class


def text_rows():
    text = torch.arange(2 * 3 * 2, dtype=torch.float32).view(2, 3, 2)  # [N=2, L=3, E=2]
    mask = torch.tensor([[False, True, True], [True, True, True]])
    return Condition(torch.tensor([4, 7]), text, mask, torch.tensor([False, True]))


def test_rows_repeats_and_devices_keep_every_field_together():
    c = text_rows()
    rep = c.repeat_interleave(3)
    assert len(rep) == 6
    assert rep.labels.tolist() == [4, 4, 4, 7, 7, 7]
    assert rep.null.tolist() == [False] * 3 + [True] * 3
    assert torch.equal(rep.text[3], c.text[1]) and torch.equal(rep.mask[2], c.mask[0])
    picked = rep[torch.tensor([5, 0])]
    assert picked.labels.tolist() == [7, 4] and picked.null.tolist() == [True, False]
    assert torch.equal(picked.text[0], c.text[1])
    assert c.to("cpu").text.device.type == "cpu"


def test_null_condition_of_labels_and_of_text():
    labels = Condition(torch.tensor([3, 0, -1]))
    assert labels.null_like().labels.tolist() == [-1, -1, -1]
    assert labels.with_null().labels.tolist() == [3, 0, -1, -1, -1, -1]
    assert labels.dropped(torch.tensor([False, True, False])).labels.tolist() == [3, -1, -1]
    guided = text_rows().with_null()
    assert guided.null.tolist() == [False, True, True, True]
    assert guided.labels.tolist() == [4, 7, -1, -1]
    assert torch.equal(guided.mask[2:], guided.mask[:2])  # a null row keeps its caption's mask (as LlamaGen)
    assert torch.equal(guided.text[2:], guided.text[:2])  # its features are replaced by the policy, not here


def test_guided_batches_and_dropout_take_conditions_and_label_tensors_alike():
    labels = torch.tensor([2, 5])
    assert with_null_class(labels, 2, "cpu").tolist() == with_null_class(Condition(labels), 2, "cpu").labels.tolist()
    g1, g2 = torch.Generator().manual_seed(0), torch.Generator().manual_seed(0)
    dropped = drop_labels(torch.tensor([1, 2, 3, 4, 5, 6]), 0.5, g1)
    same = drop_labels(Condition(torch.tensor([1, 2, 3, 4, 5, 6])), 0.5, g2)
    assert dropped.tolist() == same.labels.tolist() and (dropped < 0).any()
    text = drop_labels(Condition.of_text(torch.randn(6, 2, 3)), 0.5, torch.Generator().manual_seed(0))
    assert text.null.tolist() == (dropped < 0).tolist()  # the same draws: caption dropout is label dropout


def test_a_condition_refuses_missing_or_misshapen_fields():
    with pytest.raises(ValueError, match="needs class labels"):
        Condition()
    with pytest.raises(ValueError, match="mask must be a bool"):
        Condition(text=torch.zeros(2, 3, 4), mask=torch.ones(2, 4, dtype=torch.bool), null=torch.zeros(2).bool())
    with pytest.raises(ValueError, match="belong to a text condition"):
        Condition(torch.zeros(2, dtype=torch.long), mask=torch.ones(2, 3, dtype=torch.bool))
    assert as_condition(None) is None and as_condition(torch.tensor([1])).labels.tolist() == [1]


def test_policies_name_the_kind_of_condition_they_read():
    with pytest.raises(ValueError, match="class-conditional and got a text condition"):
        class_ids(text_rows(), 2, 10, "cpu")
    with pytest.raises(ValueError, match="text-conditioned and got class labels"):
        text_condition(torch.tensor([1, 2]), 2)
    text_gpt = GPT(vocab_size=8, block_size=4, n_layer=1, n_head=1, n_embd=8, caption_dim=2, condition_tokens=3)
    with pytest.raises(ValueError, match="text-conditioned and got no condition"):
        text_gpt(torch.zeros(2, 4, dtype=torch.long), None)
    wrong_width = Condition.of_text(torch.zeros(2, 3, 5))
    with pytest.raises(ValueError, match="max_length and width must be the policy's"):
        text_gpt(torch.zeros(2, 4, dtype=torch.long), wrong_width)


def test_padded_condition_keys_are_seen_only_by_themselves():
    valid = key_valid(torch.tensor([[False, True]]), 4)  # two condition slots (the first padding), two tokens
    assert valid.tolist() == [[False, True, True, True]]
    expected = [[1, 0, 0, 0],  # the padded slot sees itself only
                [0, 1, 0, 0],
                [0, 1, 1, 0],
                [0, 1, 1, 1]]
    assert attention_mask(valid, 0, 4)[0, 0].int().tolist() == expected
    assert attention_mask(valid, 3, 1)[0, 0].int().tolist() == [expected[3]]  # a cached step: the last row
