"""A reward server's answered errors, against the server's app in process (no sockets): logged on the client once
per distinct error; the reward failing on a request is not sent again and again, one server failing still fails
over to another."""

import logging

import httpx
import pytest
import torch
from starlette.testclient import TestClient

from rlar.reward.reconstruction import ReconstructionReward
from rlar.reward.remote import client as remote_client
from rlar.reward.remote.app import RewardService, create_app
from rlar.reward.remote.client import RemoteReward
from rlar.reward.remote.rotation import ServerPool
from rlar.reward.remote.wire import decode_scores


class Broken:
    """A reward whose device fails on every batch, as a server with a bad GPU would."""

    def __call__(self, images, targets=None, meta=None):
        raise RuntimeError("CUDA error: an illegal memory access was encountered")


@pytest.fixture
def serve(monkeypatch):
    """``serve({host: reward})``: a ``RemoteReward`` over ``http://<host>`` for each, each host answered by the
    rlar server app around its reward."""
    apps, clients = {}, []
    real_client = httpx.Client

    def forward(request: httpx.Request) -> httpx.Response:
        answer = apps[request.url.host].request(request.method, request.url.path, content=request.read())
        return httpx.Response(answer.status_code, headers=dict(answer.headers), content=answer.content)

    def make(rewards: dict, **kwargs) -> RemoteReward:
        for host, reward in rewards.items():  # a reward, or an app of its own (``request(method, path, content)``)
            apps[host] = reward if hasattr(reward, "request") else TestClient(
                create_app(RewardService(reward, host, type(reward).__name__, "cpu"))).__enter__()
        monkeypatch.setattr(remote_client.httpx, "Client",
                            lambda timeout: real_client(transport=httpx.MockTransport(forward), timeout=timeout))
        clients.append(RemoteReward([f"http://{host}" for host in rewards], backoff_s=0.0, **kwargs))
        return clients[-1]

    yield make
    for client in clients:
        client.close()
    for app in apps.values():
        if isinstance(app, TestClient):
            app.__exit__(None, None, None)


def images(n):
    return torch.rand(n, 1, 8, 8, generator=torch.Generator().manual_seed(0)) * 2 - 1  # [N, 1, 8, 8]


def test_a_reward_failing_on_the_request_is_logged_once_and_tried_twice_not_thrice(serve, caplog):
    reward = serve({"a": ReconstructionReward("l2"), "b": ReconstructionReward("l2")}, chunk_size=3, retries=2)
    with caplog.at_level(logging.WARNING, logger="rlar.reward.remote"):
        scores, _ = reward(images(8))  # no targets: l2 raises on the server
    assert scores.isnan().all()
    (warning,) = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert "/score answered 500: reward failed: AttributeError" in warning
    metrics = reward.metrics()
    assert metrics["reward/remote_failed_items"] == 8 and metrics["reward/remote_retries"] == 3  # 1 per chunk
    assert metrics["reward/remote_servers_up"] == 2
    assert reward(images(8), images(8))[0].isfinite().all()  # the servers score a request that has targets


def test_a_server_whose_reward_fails_is_logged_and_another_server_scores_its_chunks(serve, caplog):
    reward = serve({"bad": Broken(), "good": ReconstructionReward("l2")}, chunk_size=2)
    with caplog.at_level(logging.WARNING, logger="rlar.reward.remote"):
        for _ in range(2):
            assert reward(images(8), images(8))[0].isfinite().all()
    (warning,) = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert warning.startswith("reward server http://bad: /score answered 500: reward failed: RuntimeError: CUDA")
    assert reward.metrics()["reward/remote_retries"] == 4  # the 2 chunks of each call sent to bad first


class BadGateway:
    """A proxy in front of a restarting server: healthy, and the same 502 page to every request to score."""

    def request(self, method, path, content=None):
        if path == "/health":
            return httpx.Response(200, json={"ready": True})
        return httpx.Response(502, headers={"content-type": "text/plain"}, content=b"502 Bad Gateway")


def test_servers_failing_alike_on_every_try_are_tried_to_the_retry_limit(serve):
    reward = serve({"p1": BadGateway(), "p2": BadGateway()}, chunk_size=8, retries=3)
    assert reward(images(8), images(8))[0].isnan().all()
    assert reward.metrics()["reward/remote_retries"] == 3  # not given up after two alike answers



class Unreachable:
    """A host whose connections are refused: the server is down."""

    def request(self, method, path, content=None):
        raise httpx.ConnectError("connection refused")


def test_retries_count_requests_sent_again_not_attempts_with_no_server_up(serve):
    reward = serve({"down": Unreachable()}, chunk_size=4, retries=2)
    assert reward(images(8), images(8))[0].isnan().all()
    metrics = reward.metrics()
    assert metrics["reward/remote_failed_items"] == 8 and metrics["reward/remote_servers_up"] == 0
    assert metrics["reward/remote_retries"] == 0  # no server in rotation: nothing was sent, let alone again

@pytest.mark.parametrize(("scores", "got"), [([[1.0], [2.0]], "got a list among them"),
                                             ([{"score": 1.0}, 2.0], "got a dict among them"),
                                             ([1.0, True], "got a bool among them"),
                                             (["1.0", 2.0], "got a str among them"),
                                             ([10**400, 1.0], "an integer too large for a float"),
                                             ({"0": 1.0, "1": 2.0}, "list of 2 numbers, got dict")])
def test_a_response_with_scores_that_are_not_numbers_is_a_value_error_naming_what_came(scores, got):
    with pytest.raises(ValueError, match=f"response scores .*{got}"):
        decode_scores({"scores": scores}, 2)
    with pytest.raises(ValueError, match=f"response component 'l2' .*{got}"):
        decode_scores({"scores": [1.0, None], "components": {"l2": scores}}, 2)


class NestedScores:
    """A server answering each score as a one-item list: healthy, and a 200 the client cannot read."""

    def request(self, method, path, content=None):
        if path == "/health":
            return httpx.Response(200, json={"ready": True})
        return httpx.Response(200, json={"scores": [[1.0]] * 4, "components": {}})


def test_a_server_answering_scores_that_are_not_numbers_is_logged_and_its_chunks_scored_elsewhere_or_masked(serve,
                                                                                                          caplog):
    reward = serve({"nested": NestedScores(), "good": ReconstructionReward("l2")}, chunk_size=4)
    with caplog.at_level(logging.WARNING, logger="rlar.reward.remote"):
        assert reward(images(8), images(8))[0].isfinite().all()
    (warning,) = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert warning.startswith("reward server http://nested: /score: malformed response: response scores must hold "
                              "numbers or nulls, got a list among them")
    alone = serve({"nested": NestedScores()}, chunk_size=4, retries=1)
    assert alone(images(8), images(8))[0].isnan().all()  # no server scored them: masked, not a crash
    assert alone.metrics()["reward/remote_failed_items"] == 8


@pytest.mark.parametrize(("answer", "error"), [(["ok"], '/health answered 200: ["ok"]'),
                                              ("ready", '/health answered 200: "ready"'), ({"ready": True}, "")])
def test_a_health_reply_that_is_not_a_json_object_takes_the_server_out_of_rotation(answer, error):
    http = httpx.Client(transport=httpx.MockTransport(lambda request: httpx.Response(200, json=answer)))
    pool = ServerPool(["http://a"], http, {}, 5.0, 2.0)
    assert pool.check("http://a") is pool.up["http://a"] is (not error)  # only a ready object keeps it in rotation
    assert pool.errors["http://a"] == error
    http.close()
