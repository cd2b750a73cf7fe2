"""The raster sampler's decode step at static shapes, optionally compiled (``hardware.compile_decode``).

``use_static_decode(policy, compile_mode)`` swaps a raster policy's ``new_cache`` and ``step`` (the interface
``rlar.rollout.sampling`` calls) for a :class:`~rlar.policy.static_cache.StaticKVCache` and the policy's
``static_step``: the same logits at every position, from one graph. With ``compile_mode`` the step is
``torch.compile``d ("reduce-overhead" on CUDA captures it in a CUDA graph). ``prefill`` stays eager: it runs once.
"""

from __future__ import annotations

import torch

from rlar.policy.static_cache import StaticKVCache


class StaticDecode:
    """``new_cache`` / ``step`` of a policy with ``static_step``. A cache is kept per batch size, device and dtype
    and handed out again, zeroed, so that a compiled step (a CUDA graph) reads and writes the same memory at every
    call; its memory stays allocated between rollouts."""

    def __init__(self, policy, compile_mode: str | None = None):
        self.policy = policy
        self.compile_mode = compile_mode
        self.step_fn = policy.static_step if compile_mode is None else torch.compile(policy.static_step,
                                                                                      mode=compile_mode)
        self.caches: dict[tuple, StaticKVCache] = {}

    def new_cache(self, batch: int, device, dtype=None) -> StaticKVCache:
        key = (batch, torch.device(device), dtype or next(self.policy.parameters()).dtype)
        cache = self.caches.get(key)
        if cache is not None:
            cache.reset()  # the old slots are masked, but a NaN or inf left in them would leak through the mask
            return cache
        p = self.policy
        cache = StaticKVCache(p.n_layer, batch, p.n_head, p.sequence_len, p.n_embd // p.n_head, *key[1:])
        if self.compile_mode is not None:
            for tensor in cache.tensors():  # the same addresses at every call: no re-capture
                torch._dynamo.mark_static_address(tensor)
        self.caches[key] = cache
        return cache

    def step(self, token: torch.Tensor, cache: StaticKVCache) -> torch.Tensor:
        """Append ``token [N]`` at position ``cache.length``; logits ``[N, V]`` for the next position."""
        cache.position.fill_(cache.length)
        if self.compile_mode == "reduce-overhead":
            torch.compiler.cudagraph_mark_step_begin()
        logits = self.step_fn(token, cache)
        cache.length += 1
        return logits if self.compile_mode is None else logits.clone()  # a CUDA graph rewrites its output


def use_static_decode(policy, compile_mode: str | None = None) -> StaticDecode:
    """Make ``policy`` (one with ``static_step``) decode through a :class:`StaticDecode`; returns it."""
    decode = StaticDecode(policy, compile_mode)
    policy.new_cache, policy.step = decode.new_cache, decode.step
    return decode
