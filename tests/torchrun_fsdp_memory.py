"""Run by torchrun from tests/test_distributed_memory.py: one process of a 2-process FSDP2 (gloo, CPU) check of
mixed precision and of the all-gathers of one rollout. Rank 0 writes what it saw as JSON to ``sys.argv[1]``."""

import json
import sys

import torch
import torch.distributed as dist

from rlar.config.store import compose_config
from rlar.policy.gpt import GPT
from rlar.rollout.collect import collect_rollout
from rlar.rollout.sampling import policy_logprobs
from rlar.runtime.data_parallel import gathered
from rlar.runtime.hardware import Hardware


class CollectiveLog:
    """The dtypes of the all-gathers and reduce-scatters FSDP2 issues while active."""

    def __init__(self):
        self.all_gathers, self.reduce_scatters = [], []
        self.originals = {name: getattr(dist, name) for name in ("all_gather_single", "reduce_scatter_single")}

    def __enter__(self):
        def logged(name, calls):
            def call(output, input, *args, **kwargs):
                calls.append(str(output.dtype))
                return self.originals[name](output, input, *args, **kwargs)
            return call
        dist.all_gather_single = logged("all_gather_single", self.all_gathers)
        dist.reduce_scatter_single = logged("reduce_scatter_single", self.reduce_scatters)
        return self

    def __exit__(self, *_):
        for name, original in self.originals.items():
            setattr(dist, name, original)


def rollout(policy, hw, gather: bool):
    cfg = compose_config(["rollout.cfg_scale=2.0"]).rollout
    codes = torch.zeros(2, policy.block_size, dtype=torch.long)
    with hw.autocast(), (gathered(policy) if gather else torch.no_grad()), CollectiveLog() as log:
        out = collect_rollout(policy.eval(), codes, torch.tensor([0, 1]), 2, cfg, torch.Generator().manual_seed(0))
    return out, len(log.all_gathers)


def main(path: str) -> None:
    hw = Hardware(device="cpu", precision="bf16", strategy="fsdp", seed=0)
    hw.setup()
    policy = hw.prepare(GPT(vocab_size=32, block_size=16, num_classes=3, n_layer=3, n_head=2, n_embd=32))
    units = 1 + len(policy.blocks)  # FSDP2 units: one per block, and the root
    seen_dtypes = []
    policy.blocks[0].attn.key.register_forward_pre_hook(lambda m, _: seen_dtypes.append(str(m.weight.dtype)))

    per_rollout, per_rollout_gathers = rollout(policy, hw, gather=True)  # the first: every unit is sharded
    per_token, per_token_gathers = rollout(policy, hw, gather=False)  # the root stays gathered after a pass
    resharded = all(type(p).__name__ == "DTensor" for block in policy.blocks for p in block.parameters())

    with CollectiveLog() as log:  # a training pass: gathered in bf16, gradients reduced in fp32
        logp, _ = policy_logprobs(policy.train(), per_rollout.tokens, per_rollout.labels)
        logp.gather(-1, per_rollout.tokens[..., None]).mean().backward()
    grads = {str(p.grad.dtype) for p in policy.parameters()}
    if dist.get_rank() == 0:
        json.dump({"units": units, "blocks": len(policy.blocks), "tokens": policy.block_size,
                   "per_token_gathers": per_token_gathers, "per_rollout_gathers": per_rollout_gathers,
                   "same_tokens": bool(torch.equal(per_token.tokens, per_rollout.tokens)),
                   "resharded_after_rollout": resharded, "block_weight_dtypes_in_forward": sorted(set(seen_dtypes)),
                   "train_all_gather_dtypes": sorted(set(log.all_gathers)),
                   "train_reduce_scatter_dtypes": sorted(set(log.reduce_scatters)),
                   "sharded_grad_dtypes": sorted(grads)}, open(path, "w"))
    hw.teardown()


if __name__ == "__main__":
    main(sys.argv[1])
