"""rlar: reinforcement-learning fine-tuning of autoregressive image-token generators.

The seeds' Python API, importable from the top-level package.
"""

from rlar.api import build_ar_policy, build_gpt_policy, groupwise_advantages, grpo_update, reinforce_update
from rlar.loop import train_rl_loop
from rlar.reward.reconstruction import reconstruction_reward
from rlar.rollout.sampling import compute_sequence_logprob, sample_codes_with_logprobs, sample_multiple_generations
from rlar.tokenizer.frozen import FrozenTokenizer, build_tokenizer_frozen
from rlar.tokenizer.zoo_build import build_toklip_tokenizer, build_toklip_vq_model

__all__ = [
    "FrozenTokenizer",
    "build_ar_policy",
    "build_gpt_policy",
    "build_tokenizer_frozen",
    "build_toklip_tokenizer",
    "build_toklip_vq_model",
    "compute_sequence_logprob",
    "grpo_update",
    "groupwise_advantages",
    "reconstruction_reward",
    "reinforce_update",
    "sample_codes_with_logprobs",
    "sample_multiple_generations",
    "train_rl_loop",
]
