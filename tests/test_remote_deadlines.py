"""RemoteReranker's timeout is the caller's wall-clock budget, against real misbehaving loopback servers.

The servers (lychee_rerank.core.testing.servers) are plain sockets on 127.0.0.1: one accepts and never
answers, one never accepts (its accept queue is full, so a connect hangs), one trickles its answer.
The elapsed-time assertions are correctness bounds with wide slack (a 2 s budget must end by 2.5 s), not
performance figures; those are in benchmarks/client_deadlines.py.
"""

from __future__ import annotations

import asyncio
import json
import socket
import threading
import time
from collections.abc import Awaitable, Callable, Iterator
from typing import Any

import httpx
import pytest

from lychee_rerank.adapters._second_stage import Pick, SecondStage
from lychee_rerank.core import Document, Query, RemoteRerankerError
from lychee_rerank.core.remote import RemoteReranker
from lychee_rerank.core.testing.servers import LoopbackServer, Reply, never_accepting

BUDGET_S = 2.0
SLACK_S = 0.5
DOCUMENTS = [Document("a red dress"), Document("a blue car"), Document("red shoes")]


def ok(number: int, body: bytes) -> Reply:
    """The service's answer: every document of the request, scored 0.5."""
    count = len(json.loads(body)["documents"])
    return Reply.json(200, {"results": [{"index": i, "relevance_score": 0.5} for i in range(count)]})


def silent(number: int, body: bytes) -> Reply | None:
    return None


@pytest.fixture
def silent_server() -> Iterator[LoopbackServer]:
    with LoopbackServer(silent) as server:
        yield server


def timed(call: Callable[[], Any]) -> tuple[float, BaseException | None]:
    started = time.monotonic()
    try:
        call()
    except Exception as error:  # the test inspects what was raised
        return time.monotonic() - started, error
    return time.monotonic() - started, None


async def atimed(call: Callable[[], Awaitable[Any]]) -> tuple[float, BaseException | None]:
    started = time.monotonic()
    try:
        await call()
    except Exception as error:
        return time.monotonic() - started, error
    return time.monotonic() - started, None


# --- the three hanging servers: the budget holds, sync and async ------------------------------------------


async def test_a_server_that_never_answers_raises_within_the_timeout_and_is_not_retried(
    silent_server: LoopbackServer,
) -> None:
    reranker = RemoteReranker(silent_server.url, timeout=BUDGET_S, max_retries=3, backoff_s=0.01)
    elapsed, error = timed(lambda: reranker.score("q", ["a", "b"]))
    assert isinstance(error, RemoteRerankerError)
    assert "did not answer within timeout=2 s" in str(error)
    assert elapsed <= BUDGET_S + SLACK_S
    assert silent_server.requests == 1  # a read timeout is never retried: the request may be running
    elapsed, error = await atimed(lambda: reranker.arerank("q", ["a", "b"]))
    assert isinstance(error, RemoteRerankerError)
    assert elapsed <= BUDGET_S + SLACK_S
    assert silent_server.requests == 2


async def test_a_server_that_never_accepts_raises_within_the_timeout() -> None:
    with never_accepting() as url:
        reranker = RemoteReranker(url, timeout=BUDGET_S)
        elapsed, error = timed(lambda: reranker.score("q", ["a"]))
        assert isinstance(error, RemoteRerankerError)
        assert "unreachable" in str(error)
        assert "ConnectTimeout" in str(error)
        assert elapsed <= BUDGET_S + SLACK_S
        elapsed, error = await atimed(lambda: reranker.ascore("q", ["a"]))
        assert isinstance(error, RemoteRerankerError)
        assert elapsed <= BUDGET_S + SLACK_S


@pytest.mark.parametrize("trickle_headers", [True, False], ids=["headers-trickled", "body-trickled"])
async def test_a_trickling_server_cannot_stretch_the_call(trickle_headers: bool) -> None:
    # 0.05 s a byte: the answer (over 100 bytes) would take more than 5 s to arrive.
    def trickle(number: int, body: bytes) -> Reply:
        answer = ok(number, body)
        return Reply(200, answer.body, answer.headers, trickle_s=0.05, trickle_headers=trickle_headers)

    with LoopbackServer(trickle) as server:
        reranker = RemoteReranker(server.url, timeout=BUDGET_S)
        elapsed, error = timed(lambda: reranker.score("q", ["a", "b", "c"]))
        assert isinstance(error, RemoteRerankerError)
        assert "did not answer within" in str(error)
        assert elapsed <= BUDGET_S + SLACK_S
        elapsed, error = await atimed(lambda: reranker.ascore("q", ["a", "b", "c"]))
        assert isinstance(error, RemoteRerankerError)
        assert elapsed <= BUDGET_S + SLACK_S
        assert server.requests == 2


async def test_with_a_callers_transport_a_trickled_body_stops_at_the_first_chunk_past_the_deadline() -> None:
    # The caller's own transport has httpx's per-read timeouts only; the check between chunks ends the call
    # at the first chunk after the deadline, here 0.2 s apart.
    def trickle(number: int, body: bytes) -> Reply:
        return Reply(200, b"x" * 1000, trickle_s=0.2, trickle_headers=False)

    with LoopbackServer(trickle) as server:
        reranker = RemoteReranker(
            server.url, timeout=1.0, transport=httpx.HTTPTransport(), async_transport=httpx.AsyncHTTPTransport()
        )
        elapsed, error = timed(lambda: reranker.score("q", ["a"]))
        assert isinstance(error, RemoteRerankerError)
        assert "did not finish its answer within timeout=1 s" in str(error)
        assert elapsed <= 1.0 + 0.2 + SLACK_S
        elapsed, error = await atimed(lambda: reranker.ascore("q", ["a"]))
        assert isinstance(error, RemoteRerankerError)
        assert elapsed <= 1.0 + 0.2 + SLACK_S


# --- retries and their waits fit inside the budget ----------------------------------------------------------


def busy_then_ok(busy_answers: int, retry_after: str | None, status: int = 429) -> Callable[[int, bytes], Reply]:
    def answer(number: int, body: bytes) -> Reply:
        if number > busy_answers:
            return ok(number, body)
        headers = {} if retry_after is None else {"Retry_After": retry_after}
        return Reply.json(status, {"error": {"message": "queue full"}, "message": "queue full"}, **headers)

    return answer


async def test_retry_after_is_honoured_when_it_fits_in_the_budget() -> None:
    with LoopbackServer(busy_then_ok(2, "0.3", status=503)) as server:
        reranker = RemoteReranker(server.url, timeout=BUDGET_S, backoff_s=10)  # 10 s: Retry-After must win
        elapsed, error = timed(lambda: reranker.score("q", ["a"]))
        assert error is None
        assert server.requests == 3
        assert 0.6 <= elapsed <= BUDGET_S + SLACK_S  # both waits were slept, inside the budget


async def test_a_retry_after_past_the_deadline_raises_at_once_saying_when() -> None:
    with LoopbackServer(busy_then_ok(99, "30")) as server:
        reranker = RemoteReranker(server.url, timeout=BUDGET_S)
        elapsed, error = timed(lambda: reranker.score("q", ["a"]))
        assert isinstance(error, RemoteRerankerError)
        assert error.status == 429
        assert "overloaded" in str(error)
        assert "queue full" in str(error)
        assert "asked to be retried in 30 s" in str(error)
        assert elapsed < BUDGET_S / 2  # not waited
        elapsed, error = await atimed(lambda: reranker.ascore("q", ["a"]))
        assert isinstance(error, RemoteRerankerError)
        assert "retried in 30 s" in str(error)
        assert server.requests == 2


async def test_a_backoff_past_the_deadline_is_not_waited() -> None:
    with LoopbackServer(busy_then_ok(99, None, status=503)) as server:
        reranker = RemoteReranker(server.url, timeout=BUDGET_S, backoff_s=5)
        elapsed, error = timed(lambda: reranker.score("q", ["a"]))
        assert isinstance(error, RemoteRerankerError)
        assert "next retry would be in 5 s" in str(error)
        assert elapsed < BUDGET_S / 2
        assert server.requests == 1


def test_retries_stop_after_max_retries_with_the_servers_message() -> None:
    with LoopbackServer(busy_then_ok(99, "0")) as server:
        with pytest.raises(
            RemoteRerankerError, match=r"still overloaded \(HTTP 429: queue full\) after 2 retries"
        ) as caught:
            RemoteReranker(server.url, max_retries=2).score("q", ["a"])
        assert caught.value.status == 429
        assert server.requests == 3


async def test_a_connection_closed_before_the_answer_is_retried() -> None:
    def hang_up_once(number: int, body: bytes) -> Reply:
        return Reply(hang_up=True) if number % 2 == 1 else ok(number, body)

    with LoopbackServer(hang_up_once) as server:
        reranker = RemoteReranker(server.url, timeout=BUDGET_S, backoff_s=0.05)
        assert reranker.score("q", ["a"]) == [0.5]
        assert await reranker.ascore("q", ["a"]) == [0.5]
        assert server.requests == 4


@pytest.mark.parametrize("status", [500, 502, 504])
def test_other_server_errors_are_not_retried(status: int) -> None:
    with LoopbackServer(lambda number, body: Reply.json(status, {"error": {"message": "broken"}})) as server:
        with pytest.raises(RemoteRerankerError, match=f"HTTP {status}: broken"):
            RemoteReranker(server.url, backoff_s=0.01).score("q", ["a"])
        assert server.requests == 1


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def test_a_refused_connection_is_retried_until_the_service_comes_up() -> None:
    port = free_port()
    started = threading.Event()
    holder: list[LoopbackServer] = []

    def come_up() -> None:
        time.sleep(0.3)
        server = LoopbackServer(ok, port=port, lifetime_s=10)
        holder.append(server)
        server.__enter__()
        started.set()

    threading.Thread(target=come_up, daemon=True).start()
    try:
        reranker = RemoteReranker(f"http://127.0.0.1:{port}", timeout=BUDGET_S, max_retries=10, backoff_s=0.05)
        assert reranker.score("q", ["a", "b"]) == [0.5, 0.5]
        assert started.is_set()
    finally:
        started.wait(5)
        holder[0].__exit__(None, None, None)


def test_refused_connections_give_up_within_the_timeout() -> None:
    reranker = RemoteReranker(f"http://127.0.0.1:{free_port()}", timeout=1.0, max_retries=100, backoff_s=0.05)
    elapsed, error = timed(lambda: reranker.score("q", ["a"]))
    assert isinstance(error, RemoteRerankerError)
    assert "unreachable" in str(error)
    assert "ConnectError" in str(error)
    assert elapsed <= 1.0 + SLACK_S


# --- with_timeout, and the adapters' timeout_s ---------------------------------------------------------------


def test_with_timeout_is_a_view_with_its_own_budget(silent_server: LoopbackServer) -> None:
    reranker = RemoteReranker(silent_server.url, timeout=60)
    view = reranker.with_timeout(0.5)
    elapsed, error = timed(lambda: view.score("q", ["a"]))
    assert isinstance(error, RemoteRerankerError)
    assert "timeout=0.5 s" in str(error)
    assert elapsed <= 0.5 + SLACK_S
    assert reranker.timeout == 60.0
    assert repr(view) == repr(reranker)
    with pytest.raises(ValueError, match="timeout must be a positive number"):
        reranker.with_timeout(0)


async def test_second_stage_fails_open_within_timeout_s_sync_and_async(silent_server: LoopbackServer) -> None:
    stage = SecondStage(RemoteReranker(silent_server.url), top_n=2, timeout_s=0.5)
    started = time.monotonic()
    selection = stage.run(Query("q"), DOCUMENTS)
    assert time.monotonic() - started <= 0.5 + SLACK_S
    assert selection.failed
    assert selection.picks == (Pick(0, None), Pick(1, None))
    assert selection.error is not None
    assert "did not answer within timeout=0.5 s" in selection.error
    started = time.monotonic()
    asynchronous = await stage.arun(Query("q"), DOCUMENTS)
    assert time.monotonic() - started <= 0.5 + SLACK_S
    assert asynchronous == selection


async def test_timed_out_adapter_calls_leave_no_threads_behind(silent_server: LoopbackServer) -> None:
    stage = SecondStage(RemoteReranker(silent_server.url), top_n=1, timeout_s=0.1)
    before = threading.active_count()
    for _ in range(40):
        assert stage.run(Query("q"), DOCUMENTS).failed
    selections = await asyncio.gather(*(stage.arun(Query("q"), DOCUMENTS) for _ in range(40)))
    assert all(selection.failed for selection in selections)
    assert threading.active_count() <= before, [thread.name for thread in threading.enumerate()]
