"""A frozen module kept on the CPU between its calls (the KL reference under ``train.ref_on_cpu``)."""

from __future__ import annotations

from torch import nn


class CPUResident(nn.Module):
    """Wraps a frozen ``module`` that lives on the CPU: each call moves it to the device of its first input, runs it
    and moves it back, so that its weights take device memory only during its own forward pass (once per update
    minibatch for the KL reference). Under FSDP2 the same is FSDP's ``CPUOffloadPolicy``
    (``rlar.runtime.data_parallel.shard``)."""

    def __init__(self, module: nn.Module):
        super().__init__()
        self.module = module.cpu()

    def forward(self, *args, **kwargs):
        self.module.to(args[0].device)
        try:
            return self.module(*args, **kwargs)
        finally:
            self.module.cpu()
