"""Rewards scored by HTTP servers: the server (``rlar-reward-server``), its launcher and the client reward.

See docs/remote_rewards.md. ``RemoteReward`` is the client: ``rlar/conf/reward/remote.yaml``.
"""
