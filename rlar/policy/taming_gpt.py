"""Load a taming-transformers Net2NetTransformer (e.g. the class-conditional ImageNet ``cin_transformer``) into
rlar's GPT, which uses minGPT's key names (``tok_emb``, ``pos_emb``, ``blocks.N.*``, ``ln_f``, ``head``).

taming embeds the class id with the SAME ``tok_emb`` as image codes (class c and code c share a row, no offset), so
``cls_emb`` rows ``0..num_classes-1`` are copied from ``tok_emb`` rows ``0..num_classes-1``. taming has no null
class: rlar's null row is set to the mean of those rows, and classifier-free guidance is not meaningful for such a
model (keep ``rollout.cfg_scale=1``). ``pos_emb`` has ``block_size`` rows (256 for 16x16 codes), as in rlar.
The state dict cannot tell ``n_head``: build the GPT with the checkpoint's (``transformer_config.params.n_head``).
"""

from __future__ import annotations

import os
import re

import torch

from rlar.policy.gpt import GPT
from rlar.tokenizer.zoo_build import read_checkpoint, strict_load

MASK = re.compile(r"blocks\.\d+\.attn\.mask")  # minGPT's persistent causal-mask buffer [1, 1, block, block]


def taming_gpt_state(checkpoint: dict) -> dict:
    """GPT keys of a taming file (``state_dict``'s ``transformer.*``, prefix stripped), or of a bare GPT state
    dict; the causal masks are checked and dropped."""
    state = checkpoint.get("state_dict", checkpoint)
    if any(k.startswith("transformer.") for k in state):
        state = {k[len("transformer."):]: v for k, v in state.items() if k.startswith("transformer.")}
    for key in [k for k in state if MASK.fullmatch(k)]:
        mask = state.pop(key)
        if not torch.equal(mask[0, 0] != 0, torch.ones_like(mask[0, 0], dtype=torch.bool).tril()):
            raise ValueError(f"{key} is not a causal mask (n_unmasked > 0?); rlar's GPT is strictly causal")
    return state


def load_taming_transformer(gpt: GPT, path_or_state: str | os.PathLike | dict, num_classes: int) -> GPT:
    """Load the transformer of a taming checkpoint (a path, or its loaded dict) into ``gpt``, strictly on the GPT
    keys; ``cls_emb`` comes from ``tok_emb`` (see the module docstring). Returns ``gpt``."""
    if gpt.num_classes != num_classes or num_classes > gpt.vocab_size:
        raise ValueError(f"num_classes={num_classes} needs a GPT built with num_classes={num_classes} (it has "
                         f"{gpt.num_classes}) and at most vocab_size={gpt.vocab_size} classes")
    checkpoint = path_or_state if isinstance(path_or_state, dict) else read_checkpoint(path_or_state, "transformer")
    state = dict(taming_gpt_state(checkpoint))
    if "cls_emb.weight" in state:
        raise ValueError("this state dict already has cls_emb.weight: it is an rlar GPT, load it with load_state_dict")
    if "tok_emb.weight" in state:
        classes = state["tok_emb.weight"][:num_classes]  # [num_classes, D]
        state["cls_emb.weight"] = torch.cat([classes, classes.mean(0, keepdim=True)])  # + the null row
    return strict_load(gpt, state, "taming transformer")
