"""The API key is checked before the body is read; open routes are documented; the UI login is throttled."""

from __future__ import annotations

import socket
from collections.abc import Iterator

import httpx
import pytest

from lychee_rerank.core.local import LocalReranker
from lychee_rerank.core.server.access import LoginThrottle
from lychee_rerank.core.server.app import create_app
from lychee_rerank.core.server.background import BackgroundServer
from lychee_rerank.core.server.settings import ServerSettings

KEY = "s3cret-key"
GOOD = {"Authorization": f"Bearer {KEY}"}
BAD = {"Authorization": "Bearer wrong"}


@pytest.fixture(scope="module")
def keyed(tiny_reranker: LocalReranker) -> Iterator[str]:
    with BackgroundServer(create_app(tiny_reranker, ServerSettings(ui=False, api_key=KEY))) as url:
        yield url


@pytest.fixture(scope="module")
def protected(tiny_reranker: LocalReranker) -> Iterator[str]:
    settings = ServerSettings(ui=False, api_key=KEY, protect_docs=True)
    with BackgroundServer(create_app(tiny_reranker, settings)) as url:
        yield url


def test_malformed_json_without_the_key_is_401_not_invalid_json(keyed: str) -> None:
    for headers in ({}, BAD):
        answer = httpx.post(
            f"{keyed}/v1/rerank", content=b"{bad", headers={**headers, "Content-Type": "application/json"}
        )
        assert answer.status_code == 401
        assert answer.json()["error"]["type"] == "unauthorized"
    with_key = httpx.post(f"{keyed}/v1/rerank", content=b"{bad", headers={**GOOD, "Content-Type": "application/json"})
    assert with_key.status_code == 400  # with the key, the body is read and judged


def test_a_large_body_with_a_wrong_key_is_refused_from_its_headers_alone(keyed: str) -> None:
    host, port = keyed.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port)), timeout=30) as connection:
        # Only the headers are sent: an answer proves the server did not wait for the 50 MB body.
        connection.sendall(
            b"POST /v1/rerank HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer wrong\r\n"
            b"Content-Type: application/json\r\nContent-Length: 52428800\r\n\r\n"
        )
        received = b""
        while chunk := connection.recv(65536):  # ends when the server closes the connection
            received += chunk
    head = received.split(b"\r\n\r\n", 1)[0].lower()
    assert head.startswith(b"http/1.1 401 ")
    assert b"connection: close" in head
    assert b"www-authenticate: bearer" in head


@pytest.mark.parametrize("path", ["/health", "/metrics", "/docs", "/openapi.json"])
def test_health_metrics_and_docs_need_no_key_by_default(keyed: str, path: str) -> None:
    assert httpx.get(f"{keyed}{path}").status_code == 200


@pytest.mark.parametrize("path", ["/metrics", "/docs", "/openapi.json", "/docs/static/swagger-ui.css"])
def test_protect_docs_puts_metrics_and_docs_behind_the_key(protected: str, path: str) -> None:
    assert httpx.get(f"{protected}{path}").status_code == 401
    assert httpx.get(f"{protected}{path}", headers=GOOD).status_code == 200


def test_protect_docs_leaves_health_open(protected: str) -> None:
    assert httpx.get(f"{protected}/health").status_code == 200


def test_the_login_lockout_doubles_after_the_free_failures() -> None:
    throttle = LoginThrottle(free_failures=5, base_delay_s=1.0, max_delay_s=300.0, clock=lambda: 0.0)
    delays = [throttle.failed("10.0.0.1") for _ in range(16)]
    assert delays[:5] == [0.0] * 5
    assert delays[5:10] == [1.0, 2.0, 4.0, 8.0, 16.0]
    assert delays[-1] == 300.0  # capped
    assert throttle.retry_after("10.0.0.2") == 0.0  # per client
    throttle.succeeded("10.0.0.1")
    assert throttle.retry_after("10.0.0.1") == 0.0


def test_the_ui_login_refuses_a_burst_of_wrong_keys(tiny_reranker: LocalReranker) -> None:
    pytest.importorskip("gradio")
    app = create_app(tiny_reranker, ServerSettings(api_key=KEY))
    now = [1000.0]
    app.state.login_throttle.clock = lambda: now[0]  # a frozen clock: the lockouts cannot run out mid-test
    with BackgroundServer(app) as url:
        statuses = [
            httpx.post(f"{url}/ui/login", data={"username": "u", "password": f"guess{attempt}"}).status_code
            for attempt in range(30)
        ]
        right_key_while_locked = httpx.post(f"{url}/ui/login", data={"username": "u", "password": KEY})
        now[0] += 10_000  # the lockout is over
        right_key_later = httpx.post(f"{url}/ui/login", data={"username": "u", "password": KEY})
    assert statuses[:6] == [400] * 6  # five free failures, the sixth earns the first lockout
    assert statuses[6:] == [429] * 24
    assert right_key_while_locked.status_code == 429
    assert int(right_key_while_locked.headers["retry-after"]) >= 1
    assert right_key_later.status_code == 200
