"""A learned decoding schedule for a frozen ARPG (``rollout.mode=schedule``): at every step a small
network picks how many positions to decode and which, trained with the same GRPO/PPO code as token policies."""
