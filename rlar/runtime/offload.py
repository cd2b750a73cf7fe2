"""A frozen module kept on the CPU between its calls (the KL reference under ``train.ref_on_cpu``)."""

from __future__ import annotations

import torch
from torch import nn
from torch.func import functional_call


class CPUResident(nn.Module):
    """Wraps a frozen ``module`` that lives on the CPU: each call runs it with copies of its weights on the device of
    its first input (``torch.func.functional_call``), dropped afterwards; nothing is copied back, as the weights do
    not change. They take device memory only during its own forward pass (once per update minibatch for the KL
    reference). With CUDA the CPU weights are pinned once, for fast transfers. Under FSDP2 the same is FSDP's
    ``CPUOffloadPolicy`` (``rlar.runtime.data_parallel.shard``)."""

    def __init__(self, module: nn.Module):
        super().__init__()
        self.module = module.cpu()
        if torch.cuda.is_available():
            for tensor in [*self.module.parameters(), *self.module.buffers()]:
                tensor.data = tensor.data.pin_memory()

    def forward(self, *args, **kwargs):
        device = args[0].device
        on_device = {name: tensor.to(device, non_blocking=True)
                     for name, tensor in [*self.module.named_parameters(), *self.module.named_buffers()]}
        return functional_call(self.module, on_device, args, kwargs)
