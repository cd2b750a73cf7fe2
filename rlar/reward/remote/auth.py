"""The shared token: where it comes from, when it is required, and the ``Authorization: Bearer`` check."""

from __future__ import annotations

import hmac
import ipaddress
import os
from pathlib import Path

DEFAULT_TOKEN_ENV = "RLAR_REWARD_TOKEN"


def read_token(token_env: str | None = DEFAULT_TOKEN_ENV, token_file: str | None = None) -> str | None:
    """The token from ``token_file`` (stripped) if given, else from the environment variable; None if empty."""
    token = Path(token_file).read_text().strip() if token_file else os.environ.get(token_env or "", "").strip()
    return token or None


def is_loopback(host: str) -> bool:
    """True for ``localhost`` and loopback addresses (127.0.0.0/8, ::1); a wildcard or other name is not."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def auth_error(header: str | None, token: str | None) -> tuple[int, str] | None:
    """``(401|403, reason)`` when ``header`` does not carry ``Bearer <token>``; None when it does or none is set."""
    if token is None:
        return None
    scheme, _, given = (header or "").partition(" ")
    if scheme.lower() != "bearer" or not given:
        return 401, "missing 'Authorization: Bearer <token>' header"
    if not hmac.compare_digest(given.strip().encode(), token.encode()):
        return 403, "wrong token"
    return None


def bearer_headers(token: str | None) -> dict[str, str]:
    """The request header carrying ``token`` (none without one)."""
    return {"Authorization": f"Bearer {token}"} if token else {}
