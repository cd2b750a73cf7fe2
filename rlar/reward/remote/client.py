"""``reward=remote``: the reward interface, scored by rlar reward servers over HTTP (docs/remote_rewards.md)."""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from types import MappingProxyType

import httpx
import torch

from rlar.contracts import Reward
from rlar.reward.mixture import weighted_sum
from rlar.reward.remote.auth import DEFAULT_TOKEN_ENV, bearer_headers, read_token
from rlar.reward.remote.rotation import ServerPool
from rlar.reward.remote.wire import decode_scores, encode_request
from rlar.reward.scoring import chunk_meta

log = logging.getLogger(__name__)


def response_reason(resp: httpx.Response) -> str:
    """A refused request's ``detail`` (or the start of its body)."""
    try:
        return str(resp.json().get("detail"))
    except (ValueError, AttributeError):
        return resp.text[:200]


class RemoteReward(Reward):
    """``reward(images, targets, meta) -> (rewards [N], {component: [N]})`` scored by ``urls``.

    The batch is split into chunks of ``chunk_size`` sent round-robin from a thread pool; a chunk whose server
    fails (connection error, timeout, 5xx, malformed answer) is retried on another server in rotation, after
    ``backoff_s * 2^k`` seconds, up to ``retries`` times, unless the request is at fault: a 4xx, or the reward
    failing on it (500 ``reward failed: ...``) alike on two of its tries. An error a server answers is logged once
    (per distinct error). A chunk no server scored is NaN (``reward/remote_failed_items``); after
    ``max_consecutive_failures`` rounds in a row that scored no item, the next round's first call that scores none
    raises ``RuntimeError``. A round is the calls between two reads of ``metrics()``: the loop reads it once per
    iteration (its chunks, ``train.score_chunk_size``, are one round) and once per evaluation. With ``weights``, the
    reward is ``sum_k weights[k] * components[k]`` (z-scored over the whole batch first if ``normalize``) instead of
    the servers' own total.
    """

    zscores_terms = True  # with normalize: each weighted term standardized over the batch (mixture.zscored)

    def __init__(self, urls: Sequence[str], chunk_size: int = 64, timeout_s: float = 30.0, retries: int = 2,
                 backoff_s: float = 0.1, health_interval_s: float = 5.0, health_timeout_s: float = 2.0,
                 max_workers: int | None = None, weights: Mapping[str, float] = MappingProxyType({}),
                 normalize: bool = False, max_consecutive_failures: int = 3,
                 token_env: str | None = DEFAULT_TOKEN_ENV, token_file: str | None = None):
        if not urls:
            raise ValueError("reward.urls must list at least one reward server")
        if normalize and not weights:
            raise ValueError("reward.normalize z-scores the components named in reward.weights: set weights")
        self.chunk_size, self.retries, self.backoff_s = chunk_size, retries, backoff_s
        self.weights = {k: float(w) for k, w in weights.items()} if weights else None
        self.normalize, self.max_consecutive_failures = normalize, max_consecutive_failures
        self.headers = bearer_headers(read_token(token_env, token_file))
        self.http = httpx.Client(timeout=timeout_s)
        self.executor = ThreadPoolExecutor(max_workers or 2 * len(urls), thread_name_prefix="remote-reward")
        self.pool = ServerPool(list(urls), self.http, self.headers, health_interval_s, health_timeout_s)
        self.pool.refresh(self.executor)  # logs the servers that do not answer yet
        self.calls = 0
        self.failed_rounds = 0  # consecutive rounds (calls between two reads of metrics()) that scored no item
        self.round_scored = False  # an item of this round was scored
        self.unread: dict[str, float] = {}  # totals since metrics() was last read
        self.warned: set[str] = set()  # the servers' answered errors already logged
        self.warned_lock = threading.Lock()

    def score_chunk(self, images: torch.Tensor, targets: torch.Tensor | None, meta: dict, slot: int):
        """``(scores [n], {name: [n]}, retries)`` for one chunk ``[n, C, H, W]``; scores None if no server did.
        ``retries``: the requests sent after the first (an attempt with no server in rotation sends none)."""
        body, n = encode_request(images, targets, meta), images.shape[0]
        tried: list[str] = []  # the server of each request sent
        answered: list[str] = []  # the 5xx errors of its tries
        for attempt in range(self.retries + 1):
            if attempt:
                time.sleep(self.backoff_s * 2 ** (attempt - 1))
            url = self.pool.pick(slot + attempt, tried)
            if url is None:
                continue
            tried.append(url)
            try:
                resp = self.http.post(f"{url}/score", content=body, headers=self.headers)
            except httpx.TransportError as e:  # refused, reset, timed out: the server is out of rotation
                self.pool.set_state(url, False, f"/score: {type(e).__name__}: {e}")
                continue
            if resp.status_code == 200:
                try:
                    return *decode_scores(resp.json(), n), len(tried) - 1
                except ValueError as e:
                    self.warn_once(url, f"/score: malformed response: {e}")
                    continue
            reason = f"/score answered {resp.status_code}: {response_reason(resp)}"
            self.warn_once(url, reason)
            # refused (4xx), or the reward raising on this request twice alike: every server would answer it again;
            # another 5xx (one server's failure, a proxy's 502 while it restarts) is retried
            if resp.status_code < 500 or (reason in answered and "reward failed:" in reason):
                return None, None, len(tried) - 1
            answered.append(reason)
        return None, None, max(len(tried) - 1, 0)

    def warn_once(self, url: str, reason: str) -> None:
        """Record ``reason`` as ``url``'s last error (it stays in rotation: it answers) and log it, the first time
        any server answers it."""
        self.pool.set_state(url, True, reason)
        with self.warned_lock:
            if reason in self.warned:
                return
            self.warned.add(reason)
        log.warning("reward server %s: %s (logged once; reward/remote_failed_items counts the items no server "
                    "scored)", url, reason)

    def combine(self, components: dict[str, torch.Tensor], scores: torch.Tensor) -> torch.Tensor:
        """``sum_k weights[k] * components[k]`` ``[n]`` (:func:`~rlar.reward.mixture.weighted_sum`, z-scored over
        every process's items in training). A component NaN where the servers' own total ``scores [n]`` is finite
        did not apply to the item (their reward scored it without that term: CLIP without a prompt); NaN where a
        server scored nothing, or a weighted component that applies is NaN. A process no server answered still takes
        part in the pooled statistics, with no items."""
        if not components:
            components = {name: torch.full_like(scores, float("nan")) for name in self.weights}
        missing = sorted(set(self.weights) - set(components))
        if missing:
            raise ValueError(f"reward.weights names {missing}, but the servers report components {sorted(components)}")
        absent = {name: value.isnan() & scores.isfinite() for name, value in components.items()}
        return weighted_sum(components, self.weights, self.normalize, self.learning, absent, len(scores), scores.device)

    def __call__(self, images: torch.Tensor, targets: torch.Tensor | None = None, meta: dict | None = None):
        tic = time.perf_counter()
        n = images.shape[0]  # images, targets: [N, C, H, W]
        self.pool.refresh(self.executor)
        bounds = [(lo, min(lo + self.chunk_size, n)) for lo in range(0, n, self.chunk_size)]
        futures = [self.executor.submit(self.score_chunk, images[lo:hi], None if targets is None else targets[lo:hi],
                                        chunk_meta(meta, n, lo, hi), self.calls + i)
                   for i, (lo, hi) in enumerate(bounds)]
        self.calls += len(bounds)
        scores, components, failed, retries = torch.full((n,), float("nan")), {}, 0, 0
        for (lo, hi), future in zip(bounds, futures, strict=True):
            chunk_scores, chunk_components, chunk_retries = future.result()
            retries += chunk_retries
            if chunk_scores is None:
                failed += hi - lo
                continue
            scores[lo:hi] = chunk_scores
            for name, value in chunk_components.items():
                components.setdefault(name, torch.full((n,), float("nan")))[lo:hi] = value
        # on the images' device: in training the combination's statistics are all-reduced (NCCL: GPU tensors only)
        scores, components = scores.to(images.device), {k: v.to(images.device) for k, v in components.items()}
        if self.weights:
            scores = self.combine(components, scores)
        for key, value in (("calls", 1.0), ("latency_ms", 1000 * (time.perf_counter() - tic)),
                           ("retries", float(retries)), ("failed_items", float(failed))):
            self.unread[key] = self.unread.get(key, 0.0) + value
        self.round_scored |= failed < n or n == 0  # an empty call is no outage
        self.check_outage()
        return scores, components

    def check_outage(self) -> None:
        """Raises when this round has scored no item yet after ``max_consecutive_failures`` rounds that scored none."""
        if not self.round_scored and self.failed_rounds >= self.max_consecutive_failures:
            raise RuntimeError(
                f"remote reward: {self.failed_rounds + 1} rounds in a row (an iteration's or an evaluation's calls) "
                f"scored no item (more than reward.max_consecutive_failures={self.max_consecutive_failures}); "
                f"servers: {self.pool.describe()}")

    def metrics(self) -> dict[str, float]:
        """Since the last read: mean latency per call (ms), retries and items no server scored (totals); and the
        servers in rotation now. Reading resets the totals and ends a round (``max_consecutive_failures``)."""
        unread, self.unread = self.unread, {}
        if unread.get("calls"):
            self.failed_rounds = 0 if self.round_scored else self.failed_rounds + 1
        self.round_scored = False
        calls = unread.get("calls", 0.0)
        return {"reward/remote_latency_ms": unread.get("latency_ms", 0.0) / max(calls, 1.0),
                "reward/remote_retries": unread.get("retries", 0.0),
                "reward/remote_failed_items": unread.get("failed_items", 0.0),
                "reward/remote_servers_up": float(len(self.pool.live()))}

    def close(self) -> None:
        self.executor.shutdown()
        self.http.close()
