"""Requests carried whole to a replica and replayed when it dies: core/server/forwarding.py without Ray.

The replica side (:class:`AppHost`) runs real Starlette apps; the front (:class:`Forwarder`) is driven
through httpx's ASGI transport, with a transport to the replicas that fails the way a dying replica does.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, StreamingResponse
from starlette.routing import Route

from lychee_rerank.core.server.forwarding import WAITED_SCOPE_KEY, AppHost, Forwarder, ReplicaTrouble, portable_scope


class DeadReplica(Exception):
    """What the transport raises when the replica holding the request died."""


class FullQueue(Exception):
    """What the transport raises when the replicas' queue is full."""


def classify(error: BaseException) -> ReplicaTrouble | None:
    if isinstance(error, DeadReplica):
        return ReplicaTrouble(retry=True)
    if isinstance(error, FullQueue):
        return ReplicaTrouble(retry=False, status=429, retry_after_s=2.5, message="the queue is full")
    return None


def echo_app(started: list[str]) -> Starlette:
    async def echo(request: Request) -> JSONResponse:
        body = await request.json()
        return JSONResponse(
            {
                "got": body,
                "path": request.url.path,
                "query": request.url.query,
                "started": list(started),
                "waited": request.scope.get(WAITED_SCOPE_KEY),
            },
            headers={"x-replica": "r1"},
        )

    async def stream(request: Request) -> StreamingResponse:
        async def chunks() -> AsyncIterator[bytes]:
            for part in (b"one ", b"two ", b"three"):
                yield part

        return StreamingResponse(chunks(), media_type="text/plain")

    async def broken(request: Request) -> JSONResponse:
        raise ValueError("a bug in the app")

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        started.append("up")
        yield
        started.append("down")

    return Starlette(
        routes=[
            Route("/echo", echo, methods=["POST"]),
            Route("/stream", stream),
            Route("/broken", broken),
        ],
        lifespan=lifespan,
    )


def test_app_host_runs_the_lifespan_and_answers_a_request_with_its_body() -> None:
    started: list[str] = []

    async def run() -> list[dict[str, Any]]:
        host = AppHost(echo_app(started))
        await host.start()
        scope = {
            "type": "http",
            "method": "POST",
            "path": "/echo",
            "raw_path": b"/echo",
            "query_string": b"a=1",
            "headers": [(b"content-type", b"application/json")],
            "http_version": "1.1",
            "scheme": "http",
            "server": ("127.0.0.1", 80),
            "client": ("127.0.0.1", 5000),
            "root_path": "",
        }
        messages = [message async for message in host.handle(scope, b'{"x": [1, 2]}')]
        await host.stop()
        return messages

    messages = asyncio.run(run())
    assert [message["type"] for message in messages] == ["http.response.start", "http.response.body"]
    assert messages[0]["status"] == 200
    assert (b"x-replica", b"r1") in messages[0]["headers"]
    assert httpx.Response(200, content=messages[1]["body"]).json() == {
        "got": {"x": [1, 2]},
        "path": "/echo",
        "query": "a=1",
        "started": ["up"],
        "waited": None,
    }
    assert started == ["up", "down"]


def test_app_host_refuses_to_start_when_the_app_startup_fails() -> None:
    @contextlib.asynccontextmanager
    async def failing_lifespan(app: Starlette) -> AsyncIterator[None]:
        raise RuntimeError("no model here")
        yield

    async def run() -> None:
        await AppHost(Starlette(lifespan=failing_lifespan)).start()

    with pytest.raises(RuntimeError, match=r"(?s)startup failed.*no model here"):
        asyncio.run(run())


def front(
    host: AppHost, failures: list[BaseException], *, retries: int = 3, fail_after_start: bool = False
) -> tuple[Forwarder, list[int], list[str]]:
    """A Forwarder whose transport raises ``failures`` one per try, then hands the request to ``host``;
    with the list of tries and of the outcomes it reports."""
    tries: list[int] = []
    outcomes: list[str] = []

    async def send_to_replica(scope: dict[str, Any], body: bytes) -> AsyncIterator[dict[str, Any]]:
        tries.append(1)
        if failures:
            failure = failures.pop(0)
            if fail_after_start:
                yield {"type": "http.response.start", "status": 200, "headers": []}
            raise failure
        async for message in host.handle(scope, body):
            yield message

    forwarder = Forwarder(
        send_to_replica, classify, retries=retries, backoff_s=0.01, retry_after_s=3, on_outcome=outcomes.append
    )
    return forwarder, tries, outcomes


async def call(app: Forwarder, method: str, path: str, **kwargs: Any) -> httpx.Response:
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://front") as http:
        return await http.request(method, path, **kwargs)


def with_host(test: Any) -> Any:
    async def run() -> Any:
        host = AppHost(echo_app([]))
        await host.start()
        try:
            return await test(host)
        finally:
            await host.stop()

    return asyncio.run(run())


def test_a_request_reaches_the_replica_whole_and_its_answer_comes_back() -> None:
    async def test(host: AppHost) -> None:
        forwarder, tries, outcomes = front(host, [])
        response = await call(forwarder, "POST", "/echo?a=1&b=2", json={"q": "red shoes"})
        assert response.status_code == 200
        assert response.headers["x-replica"] == "r1"
        assert response.json()["got"] == {"q": "red shoes"}
        assert response.json()["query"] == "a=1&b=2"
        streamed = await call(forwarder, "GET", "/stream")
        assert streamed.text == "one two three"
        assert tries == [1, 1]
        assert outcomes == []

    with_host(test)


def test_a_request_whose_replica_died_is_replayed_on_another() -> None:
    async def test(host: AppHost) -> None:
        forwarder, tries, outcomes = front(host, [DeadReplica("actor died"), DeadReplica("actor unavailable")])
        response = await call(forwarder, "POST", "/echo", json={"q": 1})
        assert response.status_code == 200
        assert response.json()["got"] == {"q": 1}
        assert len(tries) == 3
        # The replica is told how long the request has already waited: two backoffs, 0.01 s and 0.02 s.
        assert response.json()["waited"] >= 0.03
        assert outcomes == ["replayed", "replayed"]

    with_host(test)


def test_a_replica_dying_after_the_start_but_before_the_body_is_still_replayed() -> None:
    async def test(host: AppHost) -> None:
        forwarder, tries, outcomes = front(host, [DeadReplica("died mid-answer")], fail_after_start=True)
        response = await call(forwarder, "POST", "/echo", json={"q": 2})
        assert response.status_code == 200
        assert response.json()["got"] == {"q": 2}
        assert len(tries) == 2
        assert outcomes == ["replayed"]

    with_host(test)


def test_when_every_try_finds_a_dead_replica_the_answer_is_503_with_retry_after() -> None:
    async def test(host: AppHost) -> None:
        forwarder, tries, outcomes = front(host, [DeadReplica(str(i)) for i in range(10)], retries=2)
        response = await call(forwarder, "POST", "/echo", json={})
        assert response.status_code == 503
        assert response.headers["retry-after"] == "3"
        assert response.json()["error"]["type"] == "unavailable"
        assert "retry" in response.json()["message"]
        assert len(tries) == 3
        assert outcomes == ["replayed", "replayed", "unavailable"]

    with_host(test)


def test_a_full_queue_is_429_in_the_service_body_and_is_not_replayed() -> None:
    async def test(host: AppHost) -> None:
        forwarder, tries, outcomes = front(host, [FullQueue()])
        response = await call(forwarder, "POST", "/echo", json={})
        assert response.status_code == 429
        assert response.headers["retry-after"] == "3"  # 2.5 s, rounded up to whole seconds
        assert response.json()["error"] == {"type": "overloaded", "message": "the queue is full", "status": 429}
        assert len(tries) == 1
        assert outcomes == ["overloaded"]

    with_host(test)


def test_an_unknown_transport_error_is_a_logged_500_in_the_service_body() -> None:
    async def test(host: AppHost) -> None:
        forwarder, tries, outcomes = front(host, [KeyError("bug")])
        response = await call(forwarder, "POST", "/echo", json={})
        assert response.status_code == 500
        assert response.json()["error"]["type"] == "internal_error"
        assert len(tries) == 1
        assert outcomes == ["error"]

    with_host(test)


def test_a_request_no_replica_takes_is_answered_504_at_its_deadline() -> None:
    """All replicas restarting: Ray's router would hold the request until one is up, minutes for a 7B model."""
    started_waiting = asyncio.Event()

    async def nobody_answers(scope: dict[str, Any], body: bytes) -> AsyncIterator[dict[str, Any]]:
        started_waiting.set()
        await asyncio.sleep(3600)
        yield {}  # never reached

    async def test() -> None:
        outcomes: list[str] = []
        forwarder = Forwarder(nobody_answers, classify, time_budget_s=0.2, grace_s=0.1, on_outcome=outcomes.append)
        response = await call(forwarder, "POST", "/v1/rerank", json={})
        assert outcomes == ["timeout"]
        assert started_waiting.is_set()
        assert response.status_code == 504
        assert response.json()["error"]["type"] == "timeout"
        assert "0.2 s allowed" in response.json()["message"]

    asyncio.run(test())


def test_an_app_error_inside_the_replica_comes_back_as_the_app_answered_it() -> None:
    async def test(host: AppHost) -> None:
        forwarder, tries, outcomes = front(host, [])
        response = await call(forwarder, "GET", "/broken")
        assert response.status_code == 500  # Starlette's own answer to the bug, not a replay
        assert len(tries) == 1
        assert outcomes == []  # the replica's own answer, counted by the replica

    with_host(test)


def test_portable_scope_keeps_only_what_crosses_a_process() -> None:
    scope = {
        "type": "http",
        "method": "POST",
        "path": "/v1/rerank",
        "headers": [[b"authorization", b"Bearer k"]],
        "client": ["10.0.0.1", 5555],
        "app": object(),
        "state": {"db": object()},
        "extensions": {"http.response.trailers": {}},
    }
    assert portable_scope(scope) == {
        "type": "http",
        "method": "POST",
        "path": "/v1/rerank",
        "headers": [(b"authorization", b"Bearer k")],
        "client": ("10.0.0.1", 5555),
    }
