"""Structured-config schemas of the policy options (registered as ``schema/policy/<name>``); each builder reads
its options through its schema (:func:`rlar.config.schemas.from_options`)."""

from __future__ import annotations

from dataclasses import dataclass, field

from omegaconf import MISSING

from rlar.config.schemas import RolloutSchema


@dataclass
class PretrainSchema:
    """Teacher-forced pretraining of the prior on the tokenized train split (when there is no checkpoint)."""

    steps: int = 1200
    lr: float = 1e-3
    batch_size: int = 64
    label_dropout: float = 0.1  # labels replaced by the null class, so that classifier-free guidance has a model
    seed: int = 0


@dataclass
class GPTSchema:
    _target_: str = "rlar.policy.prior.build_gpt_prior"
    vocab_size: int = MISSING  # the tokenizer's codebook: ${tokenizer.codebook_size}
    block_size: int | None = None  # null = the tokenizer's tokens per image
    n_layer: int = 3
    n_head: int = 4
    n_embd: int = 96
    dropout: float = 0.0
    grad_checkpointing: bool = False  # recompute each block's activations in the update's backward (less memory)
    # how the condition (class or caption tokens) is read: prefix (condition tokens start the sequence) |
    # cross_attention (every block attends over them)
    condition_mode: str = "prefix"
    # an rlar GPT, an rlar RL checkpoint, an rlar-export folder or a taming Net2NetTransformer; null = prior
    checkpoint: str | None = None
    pretrain: PretrainSchema = field(default_factory=PretrainSchema)
    cache_dir: str | None = None


@dataclass
class RoPETransformerSchema:
    """The options LlamaGen and ARPG share (both Llama-style transformers with 2D RoPE over the image grid)."""

    vocab_size: int = MISSING  # the tokenizer's codebook: ${tokenizer.codebook_size}
    block_size: int | None = None  # null = the tokenizer's tokens per image (a square grid)
    size: str | None = None  # a preset of the released models; it sets n_layer/n_head/dim. null = the values below
    n_layer: int = 2
    n_head: int = 4
    dim: int = 96  # model width; dim / n_head must be divisible by 4 (2D RoPE)
    multiple_of: int = 256  # SwiGLU width: 2/3 * 4 * dim (times ffn_dim_multiplier), rounded up to this
    ffn_dim_multiplier: float | None = None
    rope_base: float = 10000.0
    norm_eps: float = 1e-5  # RMSNorm epsilon
    dropout: float = 0.0  # token/residual/FFN dropout; 0 keeps the RL log-probs deterministic
    grad_checkpointing: bool = False  # recompute each block's activations in the update's backward (less memory)
    # a released checkpoint ("model"/"module"/"state_dict" or bare), an rlar RL checkpoint or an rlar-export folder;
    # null = prior
    checkpoint: str | None = None
    pretrain: PretrainSchema = field(default_factory=PretrainSchema)
    cache_dir: str | None = None


@dataclass
class LlamaGenSchema(RoPETransformerSchema):
    """size: GPT-B, GPT-L, GPT-XL, GPT-XXL, GPT-XXXL, GPT-1B, GPT-3B, GPT-7B."""

    _target_: str = "rlar.policy.llamagen_build.build_llamagen_prior"
    # c2i reads one class token; with a text_encoder (t2i) its max_length caption tokens (LlamaGen-T2I: 120), so
    # leave 1 or give that number
    cls_token_num: int = 1


@dataclass
class ParallelDecodingSchema:
    """How evaluation decodes: the rollout's parallel schedule (rollout.num_iter, .schedule, .cfg_schedule)."""

    num_iter: int = RolloutSchema.num_iter
    schedule: str = RolloutSchema.schedule
    cfg_schedule: str = RolloutSchema.cfg_schedule


@dataclass
class ARPGSchema(RoPETransformerSchema):
    """size: L, XL, XXL (arpg_300m.pt, arpg_700m.pt, arpg_1b.pt)."""

    _target_: str = "rlar.policy.arpg_build.build_arpg_prior"
    n_layer: int = 4  # both passes together: n_layer/2 self-attention blocks, n_layer/2 cross-attention blocks
    decoding: ParallelDecodingSchema = field(default_factory=ParallelDecodingSchema)
    # 4000 steps: random-order eval loss 1.55 (1200: 1.81)
    pretrain: PretrainSchema = field(default_factory=lambda: PretrainSchema(steps=4000))


POLICY_SCHEMAS = {"gpt": GPTSchema, "llamagen": LlamaGenSchema, "arpg": ARPGSchema}
