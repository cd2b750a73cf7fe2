"""Where and how a run executes: hardware, torch.distributed, checkpoints, caches, logging."""
