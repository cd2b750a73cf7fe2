"""Which reward servers are in rotation: one that fails is out until its ``/health`` answers again."""

from __future__ import annotations

import logging
import math
import threading
import time
from concurrent.futures import Executor

import httpx

log = logging.getLogger(__name__)


class ServerPool:
    """Round-robin over the servers in rotation; every server is health-checked at most every ``interval_s``."""

    def __init__(self, urls: list[str], http: httpx.Client, headers: dict[str, str], interval_s: float,
                 timeout_s: float):
        self.urls = [u.rstrip("/") for u in urls]
        self.http, self.headers, self.interval_s, self.timeout_s = http, headers, interval_s, timeout_s
        self.up = dict.fromkeys(self.urls, True)
        self.checked = dict.fromkeys(self.urls, -math.inf)  # time.monotonic() of the last health check
        self.errors = dict.fromkeys(self.urls, "")  # the last failure of each server, for error messages
        self.lock = threading.Lock()

    def set_state(self, url: str, up: bool, reason: str = "") -> None:
        with self.lock:
            if up != self.up[url]:
                log.warning("reward server %s %s", url, "back in rotation" if up else f"out of rotation: {reason}")
            self.up[url] = up
            if reason:
                self.errors[url] = reason

    def check(self, url: str) -> bool:
        """``GET /health``: the server is in rotation if it answers 200 and ready."""
        try:
            resp = self.http.get(f"{url}/health", headers=self.headers, timeout=self.timeout_s)
            answer = resp.json() if resp.status_code == 200 else None
            ok = isinstance(answer, dict) and answer.get("ready") is True  # a reply not a JSON object is not ready
            reason = "" if ok else f"/health answered {resp.status_code}: {resp.text[:200]}"
        except (httpx.HTTPError, ValueError) as e:
            ok, reason = False, f"/health: {type(e).__name__}: {e}"
        self.checked[url] = time.monotonic()
        self.set_state(url, ok, reason)
        return ok

    def refresh(self, executor: Executor) -> None:
        """Health-check, in parallel, every server not checked in the last ``interval_s``."""
        now = time.monotonic()
        list(executor.map(self.check, [u for u in self.urls if now - self.checked[u] >= self.interval_s]))

    def live(self) -> list[str]:
        with self.lock:
            return [u for u in self.urls if self.up[u]]

    def pick(self, slot: int, tried: list[str]) -> str | None:
        """The ``slot``-th server in rotation, preferring those not ``tried``; with none in rotation, the
        servers out of it are checked again first. None if no server answers."""
        live = self.live() or [u for u in self.urls if self.check(u)]
        fresh = [u for u in live if u not in tried]
        return (fresh or live)[slot % len(fresh or live)] if live else None

    def describe(self) -> str:
        """Each server with its state and last failure (for error messages)."""
        return "; ".join(f"{u} ({'up' if self.up[u] else 'down'}{': ' + self.errors[u] if self.errors[u] else ''})"
                         for u in self.urls)
