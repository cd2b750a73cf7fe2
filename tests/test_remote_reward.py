"""Remote rewards against real servers on loopback ports: equality with in-process rewards, failover,
re-admission, all servers down, and the server's safety checks (token, limits, malformed payloads)."""

import os
import signal
import socket
import subprocess
import sys
import time

import httpx
import pytest
import torch
from hydra.utils import instantiate
from safetensors.torch import save

from rlar.config.store import compose_config
from rlar.reward.mixture import WeightedReward
from rlar.reward.remote.client import RemoteReward
from rlar.reward.remote.wire import encode_request

TOKEN_ENV, TOKEN = "RLAR_TEST_REWARD_TOKEN", "test-token-123"
START_TIMEOUT_S = 40.0


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Server:
    """One ``python -m rlar.reward.remote.server`` subprocess on a loopback port (clients connect to 127.0.0.1 only)."""

    def __init__(self, tmp_path, *args: str, port: int | None = None, env: dict | None = None):
        self.args, self.port, self.env = args, port or free_port(), {**os.environ, **(env or {})}
        self.url = f"http://127.0.0.1:{self.port}"
        self.log_path = tmp_path / f"server-{self.port}.log"
        self.process = None
        self.start()

    def start(self) -> None:
        with open(self.log_path, "a") as log:
            self.process = subprocess.Popen([sys.executable, "-m", "rlar.reward.remote.server", *self.args, "--port",
                                             str(self.port)], stdout=log, stderr=subprocess.STDOUT, env=self.env)

    def wait_ready(self) -> None:
        deadline = time.monotonic() + START_TIMEOUT_S
        while time.monotonic() < deadline:
            assert self.process.poll() is None, f"server exited:\n{self.log_path.read_text()}"
            try:
                httpx.get(f"{self.url}/health", timeout=1.0)
                return
            except httpx.HTTPError:
                time.sleep(0.1)
        raise TimeoutError(f"server on {self.url} did not answer in {START_TIMEOUT_S} s")

    def alive(self) -> bool:
        return self.process.poll() is None

    def kill(self) -> None:
        if self.alive():
            self.process.send_signal(signal.SIGKILL)
        self.process.wait(timeout=10)

    def restart(self) -> None:
        """A new process on the same port."""
        self.kill()
        self.start()
        self.wait_ready()

    def health(self, headers=None) -> dict:
        return httpx.get(f"{self.url}/health", headers=headers, timeout=5.0).json()


@pytest.fixture(scope="module")
def fleet(tmp_path_factory):
    """Every module-level server, started at once: an l2 pair (failover), mix, and a token-protected l2 one
    listening on all addresses with small limits."""
    tmp = tmp_path_factory.mktemp("servers")
    servers = {
        "a": Server(tmp, "reward=l2"),
        "b": Server(tmp, "reward=l2"),
        "mix": Server(tmp, "reward=mix"),
        "secure": Server(tmp, "reward=l2", "--host", "0.0.0.0", "--token-env", TOKEN_ENV, "--max-batch", "8",
                         "--max-bytes", "65536", env={TOKEN_ENV: TOKEN}),
    }
    try:
        for server in servers.values():
            server.wait_ready()
        yield servers
    finally:
        for server in servers.values():
            server.kill()


@pytest.fixture
def pair(fleet):
    """The l2 pair, both running (a previous test may have killed one)."""
    for server in (fleet["a"], fleet["b"]):
        if not server.alive():
            server.restart()
    return fleet["a"], fleet["b"]


@pytest.fixture
def client_for():
    clients = []

    def make(*servers, **kwargs):
        clients.append(RemoteReward([s.url for s in servers], **kwargs))
        return clients[-1]

    yield make
    for client in clients:
        client.close()


def images(n, seed=0, shape=(1, 32, 32)):
    return torch.rand(n, *shape, generator=torch.Generator().manual_seed(seed)) * 2 - 1  # [N, C, H, W]


def in_process(reward: str):
    return instantiate(compose_config([f"reward={reward}"]).reward)


def test_remote_config_composes_and_builds():
    cfg = compose_config(["reward=remote", "reward.urls=[http://127.0.0.1:1,http://127.0.0.1:2]",
                          "+reward.weights={l2:1.0,ssim:0.5}", "reward.health_timeout_s=0.5"])
    reward = instantiate(cfg.reward)
    try:
        assert isinstance(reward, RemoteReward)
        assert reward.pool.urls == ["http://127.0.0.1:1", "http://127.0.0.1:2"]
        assert reward.weights == {"l2": 1.0, "ssim": 0.5} and reward.max_consecutive_failures == 3
    finally:
        reward.close()


@pytest.mark.slow
def test_l2_matches_in_process_and_sends_the_token(fleet, client_for, monkeypatch):
    monkeypatch.setenv(TOKEN_ENV, TOKEN)
    client = client_for(fleet["secure"], chunk_size=6, token_env=TOKEN_ENV)  # 20 items: chunks of 6, 6, 6, 2
    x, y = images(20), images(20, seed=1)
    meta = {"labels": torch.arange(20), "note": "json meta"}
    scores, components = client(x, y, meta)
    expected, expected_components = in_process("l2")(x, y, meta)
    assert scores.dtype == torch.float32 and torch.equal(scores, expected)
    assert components.keys() == expected_components.keys() and torch.equal(components["neg_l2"], expected)
    assert client.metrics()["reward/remote_failed_items"] == 0


@pytest.mark.slow
def test_mix_matches_in_process(fleet, client_for):
    client = client_for(fleet["mix"], chunk_size=6)
    x, y = images(16), images(16, seed=1)
    y[3] = x[3]  # an identical pair: ssim 1, l2 0
    scores, components = client(x, y, None)
    expected, expected_components = in_process("mix")(x, y, None)
    assert torch.equal(scores, expected)
    assert components.keys() == expected_components.keys() == {"l2", "ssim"}
    for name, value in expected_components.items():
        assert torch.equal(components[name], value)


@pytest.mark.slow
def test_client_weights_combine_components_over_the_whole_batch(fleet, client_for):
    """normalize z-scores over the whole batch on the client, so chunking does not change the reward."""
    client = client_for(fleet["mix"], chunk_size=5, weights={"l2": 1.0, "ssim": 2.0}, normalize=True)
    x, y = images(12), images(12, seed=1)
    scores, components = client(x, y, None)
    mix = compose_config(["reward=mix"]).reward
    expected, _ = WeightedReward(mix.components, {"l2": 1.0, "ssim": 2.0}, normalize=True)(x, y)
    torch.testing.assert_close(scores, expected, rtol=0, atol=1e-6)
    assert {"l2", "ssim"} <= components.keys()


@pytest.mark.slow
def test_health_and_info(fleet):
    health = fleet["mix"].health()
    assert health["ready"] is True and health["model"] == "mix" and health["device"] == "cpu"
    assert isinstance(health["queue"], int)
    info = httpx.get(f"{fleet['mix'].url}/info", timeout=5.0).json()
    assert info["reward"] == "mix" and info["components"] == ["l2", "ssim"] and info["version"]


@pytest.mark.slow
def test_restarted_server_is_readmitted(pair, client_for):
    a, b = pair
    client = client_for(a, b, chunk_size=4, health_interval_s=0.2, retries=2, backoff_s=0.05)
    x = images(16)
    a.kill()
    scores, _ = client(x, x.flip(0))
    assert scores.isfinite().all() and not client.pool.up[a.url]  # b scored everything; a is out
    a.restart()
    time.sleep(0.3)  # a is due for its next health check
    for _ in range(3):
        scores, _ = client(x, x.flip(0))
        assert scores.isfinite().all()
    assert client.pool.up[a.url] and client.metrics()["reward/remote_servers_up"] == 2
    assert a.health()["served"] > 0  # the new process got chunks again


@pytest.mark.slow
def test_server_killed_mid_sequence_survivor_scores_everything(pair, client_for):
    a, b = pair
    client = client_for(a, b, chunk_size=4, health_interval_s=60.0, retries=2, backoff_s=0.05)
    reward = in_process("l2")
    retries = []
    for call in range(6):
        if call == 3:
            a.kill()  # SIGKILL between calls: the client only learns it when a chunk to a fails
        x, y = images(16, seed=call), images(16, seed=100 + call)
        scores, _ = client(x, y, None)
        assert torch.equal(scores, reward(x, y)[0])  # no NaN: every item scored
        retries.append(client.metrics()["reward/remote_retries"])
    assert retries[:3] == [0, 0, 0] and retries[3] > 0
    assert not client.pool.up[a.url] and client.pool.up[b.url]



def test_an_outage_is_counted_in_rounds_of_calls_not_in_chunks():
    client = RemoteReward([f"http://127.0.0.1:{free_port()}"], chunk_size=4, retries=0, health_timeout_s=0.2,
                          max_consecutive_failures=2)  # no server listens there
    try:
        x = images(4)
        for _ in range(2):  # two rounds (iterations) of three chunk calls each: every item NaN, no error
            for _ in range(3):
                assert client(x, x)[0].isnan().all()
            assert client.metrics()["reward/remote_failed_items"] == 12
        with pytest.raises(RuntimeError, match=r"3 rounds in a row .*reward.max_consecutive_failures=2\)"):
            client(x, x)
    finally:
        client.close()

@pytest.mark.slow
def test_all_servers_down_gives_nan_then_raises(fleet, client_for):
    a, b = fleet["a"], fleet["b"]
    a.kill()
    b.kill()
    client = client_for(a, b, chunk_size=4, retries=1, backoff_s=0.01, health_timeout_s=1.0,
                        max_consecutive_failures=2)
    x = images(10)
    for _ in range(2):
        scores, components = client(x, x)
        assert scores.isnan().all() and components == {}
        assert client.metrics()["reward/remote_failed_items"] == 10
    with pytest.raises(RuntimeError, match="max_consecutive_failures=2") as error:
        client(x, x)
    assert a.url in str(error.value) and b.url in str(error.value)


def post(server, body: bytes, token: str | None = TOKEN):
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    return httpx.post(f"{server.url}/score", content=body, headers=headers, timeout=10.0)


def good_request_succeeds(server):
    x = images(2, shape=(1, 8, 8))
    resp = post(server, encode_request(x, x, None))
    assert resp.status_code == 200 and resp.json()["scores"] == [-0.0, -0.0]


@pytest.mark.slow
@pytest.mark.parametrize(("token", "status"), [(None, 401), ("wrong-token", 403)])
def test_token_required_when_listening_beyond_loopback(fleet, token, status):
    x = images(2, shape=(1, 8, 8))
    resp = post(fleet["secure"], encode_request(x, x, None), token=token)
    assert resp.status_code == status and resp.json()["detail"]
    assert httpx.get(f"{fleet['secure'].url}/info", timeout=5.0).status_code == 401
    good_request_succeeds(fleet["secure"])


def bad_bodies():
    x = images(3, shape=(1, 8, 8))
    return {
        "garbage": (b"\x00\x01 not a safetensors buffer at all", 400),
        "oversized": (encode_request(images(8, shape=(1, 64, 64)), None, None), 413),  # 128 KiB > 64 KiB
        "batch_over_limit": (encode_request(images(9, shape=(1, 8, 8)), None, None), 422),
        "integer_dtype": (encode_request((x * 100).long(), None, None), 422),
        "mismatched_shapes": (encode_request(x, x[:2], None), 422),
        "not_4d": (encode_request(x[:, 0], None, None), 422),
        "no_images": (save({"targets": x}), 422),
        "unknown_tensor": (save({"images": x, "extra": x.clone()}), 422),
        "meta_not_an_object": (save({"images": x}, metadata={"meta": "[1, 2]"}), 422),
    }


@pytest.mark.slow
@pytest.mark.parametrize("case", list(bad_bodies()))
def test_bad_request_gets_4xx_with_reason_and_server_keeps_serving(fleet, case):
    body, status = bad_bodies()[case]
    resp = post(fleet["secure"], body)
    assert resp.status_code == status
    detail = resp.json()["detail"]
    assert detail and "Traceback" not in detail
    good_request_succeeds(fleet["secure"])


@pytest.mark.slow
def test_server_refuses_non_loopback_host_without_token():
    env = {k: v for k, v in os.environ.items() if k != TOKEN_ENV}
    done = subprocess.run([sys.executable, "-m", "rlar.reward.remote.server", "reward=l2", "--host", "0.0.0.0",
                           "--port", str(free_port()), "--token-env", TOKEN_ENV],
                          env=env, capture_output=True, text=True, timeout=60)
    assert done.returncode != 0
    assert "without a token" in done.stderr and TOKEN_ENV in done.stderr and "Traceback" not in done.stderr


@pytest.mark.slow
def test_training_run_survives_a_server_killed_mid_run(tiny, tmp_path, monkeypatch, tb_scalars):
    """A real run on two servers; one is SIGKILLed after the first iteration's scoring."""
    import rlar.loop
    from rlar.loop import train_rl_loop

    a, b = Server(tmp_path, "reward=l2"), Server(tmp_path, "reward=l2")
    try:
        a.wait_ready()
        b.wait_ready()
        cfg = compose_config([*tiny, "train.iterations=3", "eval.max_items=4", "reward=remote",
                              f"reward.urls=[{a.url},{b.url}]", "reward.chunk_size=4", "train.score_chunk_size=8"])
        real_update = rlar.loop.policy_update

        def kill_after_first_scoring(*args, **kwargs):
            a.kill()
            return real_update(*args, **kwargs)

        monkeypatch.setattr(rlar.loop, "policy_update", kill_after_first_scoring)
        summary = train_rl_loop(cfg, tmp_path / "run")
        assert not a.alive()
        assert tb_scalars(tmp_path / "run", "reward/nonfinite_count") == [0.0, 0.0, 0.0]  # all scored
        assert tb_scalars(tmp_path / "run", "reward/remote_failed_items") == [0.0, 0.0, 0.0]
        # the dead server is out of rotation: found by a failed request (a retry elsewhere) or, when the iteration
        # outlasted the health-check interval (a loaded machine), by its /health check first
        assert tb_scalars(tmp_path / "run", "reward/remote_servers_up")[-1] == 1.0
        assert summary["history"][-1]["eval/nan_count"] == 0.0
    finally:
        a.kill()
        b.kill()


@pytest.mark.slow
def test_a_server_lost_mid_run_stops_it_after_the_rounds_allowed_saved_and_it_resumes_when_back(pair, tiny, tmp_path,
                                                                                              monkeypatch):
    from rlar import loop

    server = pair[0]
    overrides = [*tiny, "train.iterations=5", "eval.every=100", "train.checkpoint_every=100", "eval.max_items=4",
                 "reward=remote", f"reward.urls=[{server.url}]", "reward.retries=0",
                 "reward.max_consecutive_failures=2", "reward.health_timeout_s=0.2", "reward.timeout_s=2"]
    evaluate_prior = loop.evaluate_prior

    def then_the_server_dies(run):
        summary = evaluate_prior(run)
        server.kill()
        return summary

    monkeypatch.setattr(loop, "evaluate_prior", then_the_server_dies)
    with pytest.raises(RuntimeError, match=r"3 rounds in a row .*max_consecutive_failures=2\)"):
        loop.train_rl_loop(compose_config(overrides), tmp_path)  # iterations 1 and 2 unscored, 3 raises
    record = torch.load(tmp_path / "checkpoints" / "last.pt", weights_only=True)
    assert record["iteration"] == 2  # saved as it was after the last iteration that ran
    server.restart()
    summary = loop.train_rl_loop(compose_config(overrides), tmp_path)
    assert [h["iteration"] for h in summary["history"]] == [0, 5] and summary["history"][-1]["eval/nan_count"] == 0


@pytest.mark.slow
def test_a_run_whose_reward_servers_are_all_down_stops_at_its_first_evaluation(tiny, tmp_path):
    from rlar.loop import train_rl_loop

    dead = f"http://127.0.0.1:{free_port()}"
    cfg = compose_config([*tiny, "train.iterations=5", "eval.max_items=4", "reward=remote", f"reward.urls=[{dead}]",
                          "reward.retries=0", "reward.max_consecutive_failures=2", "reward.health_timeout_s=0.2",
                          "reward.timeout_s=0.5"])
    with pytest.raises(RuntimeError, match=r"scored none of its samples \(eval/reward NaN\)"):
        train_rl_loop(cfg, tmp_path)  # the prior's evaluation: nothing is recorded
    assert not (tmp_path / "checkpoints" / "last.pt").exists()
