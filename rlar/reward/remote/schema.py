"""The structured-config schema of ``reward=remote`` (registered as ``schema/reward/remote``)."""

from __future__ import annotations

from dataclasses import dataclass, field

from rlar.reward.remote.auth import DEFAULT_TOKEN_ENV


@dataclass
class RemoteRewardSchema:
    _target_: str = "rlar.reward.remote.client.RemoteReward"
    # the servers; chunks go round-robin to those in rotation
    urls: list[str] = field(default_factory=lambda: ["http://127.0.0.1:8700"])
    chunk_size: int = 64  # images per request (at most the servers' --max-batch)
    timeout_s: float = 30.0  # per request
    retries: int = 2  # a failed chunk is retried on another server in rotation, this many times
    backoff_s: float = 0.1  # before retry k: backoff_s * 2^(k-1) seconds
    # GET /health of each server at most this often; a failed server is re-admitted when it answers again
    health_interval_s: float = 5.0
    health_timeout_s: float = 2.0
    max_workers: int | None = None  # request threads; null = 2 per server
    # {component: weight}: reward = weighted sum of the servers' components; {} = the servers' own total
    weights: dict[str, float] = field(default_factory=dict)
    normalize: bool = False  # z-score each component first
    # after this many rounds in a row (an iteration's calls, or an evaluation's) that scored no item, the next raises
    max_consecutive_failures: int = 3
    # the shared token (Authorization: Bearer) is read from this variable, or from this file; never put the token
    # itself in the config
    token_env: str | None = DEFAULT_TOKEN_ENV
    token_file: str | None = None


REMOTE_SCHEMAS = {"remote": RemoteRewardSchema}
