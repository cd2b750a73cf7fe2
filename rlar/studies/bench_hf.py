"""``make bench`` section 5: rlar's raster sampler against Hugging Face transformers' ``generate``.

The same size on both sides: 4 layers, width 256, 4 heads, a 512-code vocabulary, batch 16, T new tokens (no
early stop), temperature 1, no top-k / top-p, per-token log-probs returned. HF's GPT-2 is built from a
``GPT2Config`` with random weights (nothing downloaded); its log-probs come from ``compute_transition_scores``.
rlar runs three ways: the eager KV cache (the default), the static-shape step eager, and that step compiled
(``hardware.compile_decode``: mode "default" on the CPU, "reduce-overhead", i.e. CUDA graphs, on a GPU). Everything
runs on the GPU when there is one. The runs are interleaved, so that a loaded machine slows them alike.
"""

from __future__ import annotations

import copy
import time

import torch
import transformers
from transformers import GenerationConfig, GPT2Config, GPT2LMHeadModel

from rlar.policy.gpt import GPT
from rlar.rollout.sampling import sample_codes_with_logprobs
from rlar.rollout.static_decode import use_static_decode

LAYERS, WIDTH, HEADS, VOCAB, BATCH = 4, 256, 4, 512, 16
START = 1  # HF's prompt: one start token per row (rlar starts from the null class token)


def hf_gpt2(seq_len: int, device: torch.device) -> GPT2LMHeadModel:
    config = GPT2Config(vocab_size=VOCAB, n_positions=seq_len + 1, n_embd=WIDTH, n_layer=LAYERS, n_head=HEADS,
                        bos_token_id=START, eos_token_id=None, pad_token_id=0)
    return GPT2LMHeadModel(config).eval().to(device)


@torch.no_grad()
def hf_sample(model: GPT2LMHeadModel, seq_len: int) -> tuple[torch.Tensor, torch.Tensor]:
    """``seq_len`` sampled tokens and their log-probs ``[BATCH, seq_len]``."""
    prompt = torch.full((BATCH, 1), START, dtype=torch.long, device=model.device)
    config = GenerationConfig(do_sample=True, temperature=1.0, top_k=0, top_p=1.0, max_new_tokens=seq_len,
                              min_new_tokens=seq_len, output_scores=True, return_dict_in_generate=True,
                              bos_token_id=START, eos_token_id=None, pad_token_id=0)
    out = model.generate(prompt, attention_mask=torch.ones_like(prompt), generation_config=config)
    logprobs = model.compute_transition_scores(out.sequences, out.scores, normalize_logits=True)  # [B, T]
    return out.sequences[:, 1:], logprobs


def rlar_vs_hf_throughput(seq_len: int = 256, repeats: int = 2) -> dict[str, float]:
    """Tokens/s of HF ``generate`` and of rlar's sampler (eager cache, static step, compiled static step)."""
    transformers.logging.set_verbosity_error()  # its notes on padding and ids do not apply to a start-token prompt
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    torch.manual_seed(0)
    hf = hf_gpt2(seq_len, device)
    eager = GPT(vocab_size=VOCAB, block_size=seq_len, n_layer=LAYERS, n_head=HEADS, n_embd=WIDTH).eval().to(device)
    static, compiled = copy.deepcopy(eager), copy.deepcopy(eager)
    use_static_decode(static)
    use_static_decode(compiled, "reduce-overhead" if device.type == "cuda" else "default")
    empty = torch.zeros(BATCH, 0, dtype=torch.long, device=device)
    runs = {"hf": lambda: hf_sample(hf, seq_len)}
    for name, policy in (("rlar", eager), ("rlar static", static), ("rlar compiled", compiled)):
        runs[name] = lambda policy=policy: sample_codes_with_logprobs(policy, empty, seq_len)
    seconds = dict.fromkeys(runs, 0.0)
    for run in runs.values():
        run()  # warm-up (and the compilation)
    for _ in range(repeats):
        for name, run in runs.items():
            tic = time.perf_counter()
            tokens, logprobs = run()
            if device.type == "cuda":
                torch.cuda.synchronize()
            seconds[name] += time.perf_counter() - tic
            assert tokens.shape == logprobs.shape == (BATCH, seq_len)
    return {name: repeats * BATCH * seq_len / s for name, s in seconds.items()}
