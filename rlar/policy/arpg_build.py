"""The ARPG "before RL" policy: a released checkpoint, or a tiny one pretrained on the tokenized train split with
random-order teacher forcing (a fresh permutation per sample and step), cached like the GPT prior."""

from __future__ import annotations

from dataclasses import asdict

from rlar.config.schemas import from_options
from rlar.data.batches import ImageData
from rlar.policy.arpg import ARPG, load_arpg_state
from rlar.policy.exported import folder_or_file
from rlar.policy.llamagen_build import cached_rope_prior, rope_transformer_arch
from rlar.policy.schemas import ARPGSchema
from rlar.runtime.cache import seeded
from rlar.tokenizer.frozen import FrozenTokenizer


def build_arpg_prior(tokenizer: FrozenTokenizer, data: ImageData, text_encoder=None, **options) -> ARPG:
    """An ARPG policy loaded strictly from ``checkpoint``, or from the cached prior (pretrained on a miss).
    ``options``: the fields of :class:`ARPGSchema`; ``decoding`` is the parallel sampler's settings for evaluation
    (the config passes the rollout's). ARPG is class-conditional: a ``text_encoder`` is refused."""
    if text_encoder is not None:
        raise ValueError("policy=arpg is class-conditional; text conditions need policy=gpt or policy=llamagen "
                         "(or set text_encoder=null)")
    spec = from_options(ARPGSchema, options)
    arch = rope_transformer_arch(spec, tokenizer, data)
    with seeded(spec.pretrain.seed):  # a cached prior depends only on its key
        policy = ARPG(**arch, decoding=asdict(spec.decoding), grad_checkpointing=spec.grad_checkpointing)
    if spec.checkpoint:
        return load_arpg_state(policy, folder_or_file(spec.checkpoint, policy))
    return cached_rope_prior(policy, "arpg_prior", arch, spec, tokenizer, data)
