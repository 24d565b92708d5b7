"""Slow and idle clients are closed by the connection deadlines, and the cap makes room for new clients."""

from __future__ import annotations

import asyncio
import logging
import socket
import threading
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from lychee_rerank.core.local import LocalReranker
from lychee_rerank.core.server.app import create_app
from lychee_rerank.core.server.background import BackgroundServer
from lychee_rerank.core.server.connections import AcceptErrorLog, ConnectionLimits
from lychee_rerank.core.server.settings import ServerSettings

BODY = {"query": "q", "documents": ["a", "b"]}
# A bound on each socket read, far above the deadlines under test: a broken deadline fails, not hangs.
READ_BOUND_S = 30


@pytest.fixture(scope="module")
def served(tiny_reranker: LocalReranker) -> Iterator[tuple[str, BackgroundServer]]:
    settings = ServerSettings(ui=False, header_timeout_s=0.3, body_timeout_s=0.3, max_connections=6)
    server = BackgroundServer(create_app(tiny_reranker, settings), limits=settings.connection_limits())
    with server as url:
        yield url, server


def _connect(url: str) -> socket.socket:
    host, port = url.removeprefix("http://").split(":")
    connection = socket.create_connection((host, int(port)), timeout=READ_BOUND_S)
    return connection


def _read_all(connection: socket.socket) -> bytes:
    """Everything the server sends until it closes the connection."""
    chunks = []
    while chunk := connection.recv(65536):
        chunks.append(chunk)
    return b"".join(chunks)


def test_a_client_that_stalls_in_its_headers_gets_408_and_is_closed(served: tuple[str, Any]) -> None:
    url, _ = served
    with _connect(url) as connection:
        connection.sendall(b"POST /v1/rerank HTTP/1.1\r\nHost: x\r\nContent-Ty")
        answer = _read_all(connection)
    assert answer.startswith(b"HTTP/1.1 408 ")
    assert b"connection: close" in answer.lower()
    assert b"did not arrive within 0.3 s" in answer


def test_a_client_that_stalls_in_its_body_gets_408_and_is_closed(served: tuple[str, Any]) -> None:
    url, _ = served
    with _connect(url) as connection:
        connection.sendall(b'POST /v1/rerank HTTP/1.1\r\nHost: x\r\nContent-Length: 1000\r\n\r\n{"query"')
        answer = _read_all(connection)
    assert answer.startswith(b"HTTP/1.1 408 ")
    assert b"body did not arrive" in answer


def test_a_connection_that_sends_nothing_is_closed_without_an_answer(served: tuple[str, Any]) -> None:
    url, _ = served
    with _connect(url) as connection:
        assert _read_all(connection) == b""


def test_an_idle_keep_alive_connection_is_closed_after_its_answer(served: tuple[str, Any]) -> None:
    url, _ = served
    with _connect(url) as connection:
        connection.sendall(b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n")
        answer = _read_all(connection)  # returns only once the server closes the idle connection
    assert answer.startswith(b"HTTP/1.1 200 ")
    assert answer.count(b"HTTP/1.1") == 1


def test_at_the_cap_the_longest_stalled_connection_makes_room_for_a_normal_request(
    tiny_reranker: LocalReranker,
) -> None:
    # Deadlines far away: only the cap can close anything here.
    settings = ServerSettings(ui=False, header_timeout_s=600, body_timeout_s=600, max_connections=4)
    server = BackgroundServer(create_app(tiny_reranker, settings), limits=settings.connection_limits())
    with server as url:
        stalled = [_connect(url) for _ in range(4)]
        for connection in stalled:
            connection.sendall(b"POST /v1/rerank HTTP/1.1\r\nHost: x\r\n")
        answer = httpx.post(f"{url}/v1/rerank", json=BODY, timeout=READ_BOUND_S)
        assert answer.status_code == 200
        first = _read_all(stalled[0])  # the oldest stall was closed to let the request in
        assert first.startswith(b"HTTP/1.1 503 ")
        assert server.server.guard.evicted >= 1
        for connection in stalled:
            connection.close()


def test_at_the_cap_with_every_connection_busy_a_new_one_gets_503(tiny_reranker: LocalReranker) -> None:
    class Busy:
        """An app whose requests wait until released, so their connections are never 'stalled'."""

        def __init__(self) -> None:
            self.release = asyncio.Event()
            self.entered = threading.Semaphore(0)
            self.loop: asyncio.AbstractEventLoop | None = None

        async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
            if scope["type"] == "lifespan":
                await receive()
                await send({"type": "lifespan.startup.complete"})
                await receive()
                await send({"type": "lifespan.shutdown.complete"})
                return
            self.loop = asyncio.get_running_loop()
            self.entered.release()
            await asyncio.wait_for(self.release.wait(), READ_BOUND_S)
            await send({"type": "http.response.start", "status": 204, "headers": []})
            await send({"type": "http.response.body", "body": b""})

    app = Busy()
    server = BackgroundServer(app, limits=ConnectionLimits(max_connections=2))
    with server as url:
        busy = [_connect(url) for _ in range(2)]
        for connection in busy:
            connection.sendall(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
        for _ in busy:  # both requests are being answered: neither connection is stalled
            assert app.entered.acquire(timeout=READ_BOUND_S)
        with _connect(url) as third:
            answer = _read_all(third)
        assert answer.startswith(b"HTTP/1.1 503 ")
        assert server.server.guard.refused == 1
        assert app.loop is not None
        app.loop.call_soon_threadsafe(app.release.set)
        for connection in busy:
            assert _read_all(connection).startswith(b"HTTP/1.1 204 ")
            connection.close()


def test_accept_errors_are_logged_at_most_once_a_second(caplog: pytest.LogCaptureFixture) -> None:
    now = [100.0]
    handler = AcceptErrorLog(clock=lambda: now[0])
    loop = asyncio.new_event_loop()
    context = {"message": "socket.accept() out of system resource", "exception": OSError(24, "Too many open files")}
    try:
        with caplog.at_level(logging.ERROR, logger="lychee_rerank.core.server.connections"):
            for step in range(300):  # 300 failed accepts in 3 s
                now[0] = 100.0 + step / 100
                handler(loop, context)
    finally:
        loop.close()
    records = [record for record in caplog.records if "cannot accept connections" in record.getMessage()]
    assert len(records) == 3
    assert all(record.exc_info is None for record in records)  # one line each, no traceback
    assert "99 more since the last report" in records[1].getMessage()
    assert "--max-connections" in records[0].getMessage()


def test_the_connection_cap_is_fitted_under_the_open_file_limit() -> None:
    assert ConnectionLimits(max_connections=5000).fitted(1024).max_connections == 896
    assert ConnectionLimits(max_connections=100).fitted(1024).max_connections == 100
    with pytest.raises(ValueError, match="header_timeout_s"):
        ServerSettings(header_timeout_s=0)


def test_a_body_over_the_limit_is_refused_from_its_headers_and_the_connection_closed(served: tuple[str, Any]) -> None:
    url, _ = served
    with _connect(url) as connection:
        connection.sendall(b"POST /v1/rerank HTTP/1.1\r\nHost: x\r\nContent-Length: 104857600\r\n\r\n")
        answer = _read_all(connection)  # ends only when the server closes, without waiting for 100 MB
    head = answer.split(b"\r\n\r\n", 1)[0].lower()
    assert head.startswith(b"http/1.1 413 ")
    assert b"connection: close" in head
