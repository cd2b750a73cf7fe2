"""Rollouts: sampling token sequences with their log-probabilities, in every rollout mode."""
