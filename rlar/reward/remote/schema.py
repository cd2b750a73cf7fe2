"""The structured-config schema of ``reward=remote`` (registered as ``schema/reward/remote``)."""

from __future__ import annotations

from dataclasses import dataclass, field

from rlar.reward.remote.auth import DEFAULT_TOKEN_ENV


@dataclass
class RemoteRewardSchema:
    _target_: str = "rlar.reward.remote.client.RemoteReward"
    urls: list[str] = field(default_factory=lambda: ["http://127.0.0.1:8700"])
    chunk_size: int = 64
    timeout_s: float = 30.0
    retries: int = 2
    backoff_s: float = 0.1
    health_interval_s: float = 5.0
    health_timeout_s: float = 2.0
    max_workers: int | None = None
    weights: dict[str, float] = field(default_factory=dict)
    normalize: bool = False
    max_consecutive_failures: int = 3
    token_env: str | None = DEFAULT_TOKEN_ENV
    token_file: str | None = None


REMOTE_SCHEMAS = {"remote": RemoteRewardSchema}
