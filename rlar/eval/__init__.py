"""Evaluation: free-running samples scored by the reward and by the evaluation model."""
