"""The reward server bounds the request bodies it holds (``--max-uploads``) and answers a half-sent body 408 after
``--body-timeout``; an in-process server on a loopback port."""

import socket
import threading
import time

import httpx
import pytest
import torch
import uvicorn

from rlar.reward.remote.app import RewardService, create_app
from rlar.reward.remote.wire import encode_request


def sum_reward(images, targets, meta):
    return images.flatten(1).sum(1), {}


@pytest.fixture
def server():
    """``RewardService(max_uploads=1, body_timeout_s=1)`` served on 127.0.0.1 from a thread; yields its port."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    service = RewardService(sum_reward, "sum", "sum", "cpu", max_uploads=1, body_timeout_s=1.0)
    uv = uvicorn.Server(uvicorn.Config(create_app(service), host="127.0.0.1", port=port, log_config=None))
    thread = threading.Thread(target=uv.run, daemon=True)
    thread.start()
    for _ in range(100):
        if uv.started:
            break
        time.sleep(0.05)
    yield port
    uv.should_exit = True
    thread.join(timeout=10)


def half_sent(port: int) -> socket.socket:
    """A connection that declared a 1000-byte body and sent 10 bytes of it."""
    conn = socket.create_connection(("127.0.0.1", port), timeout=10)
    conn.sendall(b"POST /score HTTP/1.1\r\nHost: x\r\nContent-Length: 1000\r\n\r\n" + b"x" * 10)
    return conn


@pytest.mark.slow
def test_a_half_sent_body_times_out_and_holds_the_only_slot_until_then(server):
    slow = half_sent(server)
    time.sleep(0.2)  # the slow body has the one upload slot
    x = torch.ones(2, 1, 4, 4)
    tic = time.monotonic()
    resp = httpx.post(f"http://127.0.0.1:{server}/score", content=encode_request(x, None, None), timeout=10)
    waited = time.monotonic() - tic
    assert resp.status_code == 200 and resp.json()["scores"] == [16.0, 16.0]
    assert waited > 0.5  # it was read only once the slow body gave up its slot
    answer = slow.recv(4096).decode()
    slow.close()
    assert answer.startswith("HTTP/1.1 408") and "--body-timeout" in answer


@pytest.mark.slow
def test_requests_after_a_timeout_are_served(server):
    half_sent(server).close()  # a client gone mid-body
    x = torch.zeros(1, 1, 2, 2)
    for _ in range(3):
        resp = httpx.post(f"http://127.0.0.1:{server}/score", content=encode_request(x, None, None), timeout=10)
        assert resp.status_code == 200 and resp.json()["scores"] == [0.0]


def test_a_body_timeout_is_408_on_python_3_10_too(monkeypatch):
    """On Python 3.10 ``asyncio.wait_for`` raises ``asyncio.TimeoutError``, not the builtin ``TimeoutError``: the
    server still answers 408, not 500."""
    import asyncio

    from rlar.reward.remote import app
    from rlar.reward.remote.wire import WireError

    class AsyncioTimeoutError(Exception):
        """Python 3.10's ``asyncio.TimeoutError``: no subclass of the builtin ``TimeoutError``."""

    async def wait_for(awaitable, timeout):
        awaitable.close()  # never awaited: the body never arrives
        raise AsyncioTimeoutError

    monkeypatch.setattr(app.asyncio, "TimeoutError", AsyncioTimeoutError)
    monkeypatch.setattr(app.asyncio, "wait_for", wait_for)
    service = RewardService(sum_reward, "sum", "sum", "cpu", body_timeout_s=1.0)
    with pytest.raises(WireError, match="--body-timeout") as caught:
        asyncio.run(service.read_body(None))
    assert caught.value.status == 408


@pytest.mark.slow
def test_health_counts_the_requests_waiting_for_an_upload_slot(server):
    """``queue``: every request received and not yet answered, the one reading its body and the one waiting for the
    only slot alike."""
    waiting = [half_sent(server), half_sent(server)]
    time.sleep(0.2)
    assert httpx.get(f"http://127.0.0.1:{server}/health", timeout=5).json()["queue"] == 2
    for conn in waiting:
        conn.close()
