"""RemoteReranker over several endpoints: calls in turn, failures moved to the next, failing endpoints rested.

Against plain-socket loopback servers (lychee_rerank.core.testing.servers) for the rules, and against two
real services on loopback, one of them stopped mid-run, for "no request lost".
"""

from __future__ import annotations

import asyncio
import json
import re
import socket
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor, wait
from contextlib import ExitStack
from pathlib import Path

import httpx
import pytest

from lychee_rerank.core import LocalReranker, RemoteRerankerError
from lychee_rerank.core.endpoints import Endpoint, EndpointPool, parse_endpoints
from lychee_rerank.core.remote import RemoteReranker, as_reranker
from lychee_rerank.core.server.background import running_service
from lychee_rerank.core.testing.servers import LoopbackServer, Reply, never_accepting

SLACK_S = 0.5


def ok(number: int, body: bytes) -> Reply:
    count = len(json.loads(body)["documents"])
    return Reply.json(200, {"results": [{"index": i, "relevance_score": 0.5} for i in range(count)]})


def failing_first(times: int, reply: Reply) -> Callable[[int, bytes], Reply]:
    return lambda number, body: reply if number <= times else ok(number, body)


def refused_url() -> str:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return f"http://127.0.0.1:{probe.getsockname()[1]}"


def test_several_urls_as_a_list_or_comma_separated() -> None:
    listed = RemoteReranker(["http://gpu-a:8000/", "http://gpu-b:8000"])
    joined = as_reranker("http://gpu-a:8000, http://gpu-b:8000")
    assert isinstance(joined, RemoteReranker)
    assert listed.urls == joined.urls == ("http://gpu-a:8000", "http://gpu-b:8000")
    assert repr(listed) == "RemoteReranker('http://gpu-a:8000,http://gpu-b:8000')"
    with pytest.raises(ValueError, match="given twice"):
        RemoteReranker("http://gpu-a:8000,http://gpu-a:8000/")
    with pytest.raises(ValueError, match="give the service's base URL"):
        RemoteReranker(" , ")
    with pytest.raises(ValueError, match="http:// or https://"):
        RemoteReranker(["http://gpu-a:8000", "gpu-b:8000"])


async def test_calls_are_spread_across_the_endpoints_in_turn() -> None:
    with LoopbackServer(ok) as first, LoopbackServer(ok) as second:
        reranker = RemoteReranker([first.url, second.url])
        for _ in range(6):
            assert reranker.score("q", ["a"]) == [0.5]
        for _ in range(4):
            assert await reranker.ascore("q", ["a"]) == [0.5]
        assert (first.requests, second.requests) == (5, 5)


def test_a_refused_connection_moves_the_call_to_the_next_endpoint_at_once_and_rests_it() -> None:
    with LoopbackServer(ok) as alive:
        reranker = RemoteReranker([refused_url(), alive.url], backoff_s=10, dead_backoff_s=30)
        started = time.monotonic()
        assert reranker.score("q", ["a", "b"]) == [0.5, 0.5]
        assert time.monotonic() - started < 5  # moved at once: the 10 s backoff was not waited
        for _ in range(4):  # the refused endpoint rests 30 s: every later call starts on the live one
            reranker.score("q", ["a"])
        assert alive.requests == 5


@pytest.mark.parametrize(
    "failure",
    [
        Reply.json(503, {"error": {"message": "loading"}}, Retry_After="30"),
        Reply.json(429, {"error": {"message": "queue full"}}, Retry_After="30"),
        Reply.json(500, {"error": {"message": "boom"}}),
        Reply(502, b"<html>Bad Gateway</html>"),
    ],
    ids=["503", "429", "500", "502"],
)
async def test_an_overloaded_or_failing_endpoint_moves_the_call_to_the_next(failure: Reply) -> None:
    with LoopbackServer(lambda number, body: failure) as broken, LoopbackServer(ok) as alive:
        reranker = RemoteReranker([broken.url, alive.url], timeout=5, backoff_s=10)
        started = time.monotonic()
        assert reranker.score("q", ["a"]) == [0.5]
        assert await reranker.ascore("q", ["a"]) == [0.5]
        assert time.monotonic() - started < 5
        assert broken.requests == 1  # rested after its failure: the second call went to the live one
        assert alive.requests == 2


def test_a_rested_endpoint_is_tried_again_after_its_rest() -> None:
    busy = Reply.json(503, {"error": {"message": "loading"}})
    with LoopbackServer(failing_first(1, busy)) as recovering, LoopbackServer(ok) as alive:
        reranker = RemoteReranker([recovering.url, alive.url], dead_backoff_s=0.3)
        reranker.score("q", ["a"])  # recovering answers 503: moved to alive
        reranker.score("q", ["a"])  # recovering rests: alive
        assert (recovering.requests, alive.requests) == (1, 2)
        time.sleep(0.4)
        for _ in range(4):
            reranker.score("q", ["a"])
        assert recovering.requests == 3  # back in turn, and alive again


def test_a_host_that_never_accepts_gets_only_a_share_of_the_budget() -> None:
    with never_accepting() as hanging, LoopbackServer(ok) as alive:
        reranker = RemoteReranker([hanging, alive.url], timeout=2.0)
        started = time.monotonic()
        assert reranker.score("q", ["a"]) == [0.5]  # the hanging host first: it gets half the budget
        assert time.monotonic() - started <= 2.0 + SLACK_S
        assert alive.requests == 1


async def test_every_endpoint_down_raises_within_the_timeout_naming_them() -> None:
    first, second = refused_url(), refused_url()
    reranker = RemoteReranker([first, second], timeout=1.0, max_retries=50, backoff_s=0.05)
    started = time.monotonic()
    with pytest.raises(RemoteRerankerError, match="unreachable") as caught:
        reranker.score("q", ["a"])
    assert time.monotonic() - started <= 1.0 + SLACK_S
    assert first in str(caught.value)
    assert second in str(caught.value)
    with pytest.raises(RemoteRerankerError, match="also tried"):
        await reranker.ascore("q", ["a"])


def test_a_read_timeout_is_not_moved_to_another_endpoint() -> None:
    with LoopbackServer(lambda number, body: None) as silent, LoopbackServer(ok) as alive:
        reranker = RemoteReranker([silent.url, alive.url], timeout=1.0)
        with pytest.raises(RemoteRerankerError, match="did not answer within timeout=1 s"):
            reranker.score("q", ["a"])
        assert (silent.requests, alive.requests) == (1, 0)
        assert reranker.score("q", ["a"]) == [0.5]  # the silent one now rests


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_the_rest_doubles_with_each_failure_in_a_row_up_to_the_cap_and_a_success_forgets() -> None:
    clock = Clock()
    a, b = parse_endpoints("http://a:1,http://b:1")
    pool = EndpointPool([a, b], dead_backoff_s=1.0, max_dead_backoff_s=5.0, clock=clock)
    assert [pool.failed(a) for _ in range(5)] == [1.0, 2.0, 4.0, 5.0, 5.0]
    assert pool.order() == [b, a]
    assert pool.resting() == [a]
    clock.now += 5.0
    assert pool.resting() == []
    assert pool.failed(a) == 5.0  # still failing in a row
    pool.succeeded(a)
    assert pool.failed(a) == 1.0
    assert pool.failed(b, at_least_s=30.0) == 30.0  # never less than the Retry-After it sent


def test_when_every_endpoint_rests_the_one_back_first_is_tried_first() -> None:
    clock = Clock()
    a, b, c = parse_endpoints(["http://a:1", "http://b:1", "http://c:1"])
    pool = EndpointPool([a, b, c], clock=clock)
    pool.failed(b)
    pool.failed(a)
    pool.failed(a)
    assert pool.order()[0] == c
    pool.failed(c, at_least_s=10)
    assert pool.order() == [b, a, c]


def test_live_endpoints_take_turns() -> None:
    endpoints = parse_endpoints("http://a:1,http://b:1,http://c:1")
    pool = EndpointPool(endpoints, clock=Clock())
    firsts = [pool.order()[0] for _ in range(6)]
    assert firsts == [*endpoints, *endpoints]
    pool.failed(endpoints[1])
    assert {pool.order()[0] for _ in range(4)} == {endpoints[0], endpoints[2]}


def test_endpoint_credentials_are_per_url_and_never_shown() -> None:
    (endpoint,) = parse_endpoints("http://admin:hunter2@gpu-a:8000/")
    assert endpoint == Endpoint("http://gpu-a:8000", "http://gpu-a:8000/v1/rerank")
    assert isinstance(endpoint.auth, httpx.BasicAuth)
    assert "hunter2" not in repr(endpoint)


# --- two real services, one stopped mid-run -------------------------------------------------------------------

DOCUMENTS = ["a white linen shirt", "red shoes", "a chart of revenue", "科学问题"]


def documents_scored(url: str) -> float:
    text = httpx.get(f"{url}/metrics", timeout=5).text
    found = re.search(r"^lychee_documents_scored_total ([0-9.e+]+)$", text, re.MULTILINE)
    return float(found.group(1)) if found else 0.0


def test_a_service_stopped_mid_run_loses_no_request(tiny_model_dir: Path, tiny_reranker: LocalReranker) -> None:
    expected = tiny_reranker.score("white shirt", DOCUMENTS)
    with running_service(tiny_model_dir) as staying, ExitStack() as stopping:
        leaving = stopping.enter_context(running_service(tiny_model_dir))
        reranker = RemoteReranker([leaving.url, staying.url], timeout=60)
        with ThreadPoolExecutor(4) as workers:
            before = [workers.submit(reranker.score, "white shirt", DOCUMENTS) for _ in range(8)]
            wait(before)
            served_by_leaving = documents_scored(leaving.url)
            stopped = workers.submit(stopping.close)  # stop it while more requests go out
            during = [workers.submit(reranker.score, "white shirt", DOCUMENTS) for _ in range(16)]
            stopped.result(timeout=30)
            after = [reranker.score("white shirt", DOCUMENTS) for _ in range(4)]
        answers = [future.result() for future in [*before, *during]] + after
        assert len(answers) == 28
        for scores in answers:
            assert scores == pytest.approx(expected, abs=1e-5)
        assert served_by_leaving >= len(DOCUMENTS)  # it did serve before it was stopped
        assert documents_scored(staying.url) >= len(DOCUMENTS) * 4  # and the other one took over


async def test_a_service_stopped_mid_run_loses_no_async_request(
    tiny_model_dir: Path, tiny_reranker: LocalReranker
) -> None:
    expected = tiny_reranker.score("white shirt", DOCUMENTS)
    with running_service(tiny_model_dir) as staying, ExitStack() as stopping:
        leaving = stopping.enter_context(running_service(tiny_model_dir))
        reranker = RemoteReranker([leaving.url, staying.url], timeout=60)
        before = await asyncio.gather(*(reranker.ascore("white shirt", DOCUMENTS) for _ in range(6)))
        during = asyncio.gather(*(reranker.ascore("white shirt", DOCUMENTS) for _ in range(12)))
        await asyncio.to_thread(stopping.close)
        answers = [*before, *await during]
        answers += [await reranker.ascore("white shirt", DOCUMENTS) for _ in range(4)]
        for scores in answers:
            assert scores == pytest.approx(expected, abs=1e-5)
