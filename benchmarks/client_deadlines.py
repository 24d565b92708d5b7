"""How long ``RemoteReranker`` really takes against services that hang, and what adapters' timeouts leave behind.

Run from the repository root, by hand (it takes about 30 s; ``--default-timeout`` adds two minutes):

    .venv/bin/python benchmarks/client_deadlines.py
    .venv/bin/python benchmarks/client_deadlines.py --default-timeout --repeat 1

Against loopback servers made of plain sockets (``lychee_rerank.core.testing.servers``): one that accepts and
never answers, one that never accepts (a connect hangs), one that trickles its answer a byte at a time.
For each it prints the wall time of a call with ``timeout=2`` (sync and async; min and max over
``--repeat`` calls) and, with ``--default-timeout``, with the default settings. Then the process's thread
count before and after 40 adapter calls (``SecondStage``, what every adapter uses) with ``timeout_s=0.5``
against the silent server: with a ``RemoteReranker`` (which keeps the deadline itself) and, as the
reference measured in the same run, with the same reranker hidden behind a wrapper without
``with_timeout`` (an adapter must then wait in a worker thread, the only way before).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from typing import Any

from lychee_rerank.adapters._second_stage import SecondStage
from lychee_rerank.core import Document, Query
from lychee_rerank.core.inputs import DocumentLike, QueryLike
from lychee_rerank.core.interface import BaseReranker, RerankResult
from lychee_rerank.core.remote import RemoteReranker
from lychee_rerank.core.testing.servers import LoopbackServer, Reply, never_accepting

DOCUMENTS = [Document("a red dress"), Document("a blue car"), Document("red shoes")]


class WithoutDeadline(BaseReranker):
    """A reranker that cannot keep a deadline itself: adapters wait for it in a worker thread."""

    def __init__(self, inner: RemoteReranker) -> None:
        self.inner = inner

    def score(
        self, query: QueryLike, documents: Sequence[DocumentLike], *, instruction: str | None = None
    ) -> list[float]:
        return self.inner.score(query, documents, instruction=instruction)

    def rerank(
        self,
        query: QueryLike,
        documents: Sequence[DocumentLike],
        *,
        top_n: int | None = None,
        instruction: str | None = None,
        min_score: float | None = None,
    ) -> list[RerankResult]:
        return self.inner.rerank(query, documents, top_n=top_n, instruction=instruction, min_score=min_score)


@contextlib.contextmanager
def silent() -> Iterator[str]:
    with LoopbackServer(lambda number, body: None, lifetime_s=600) as server:
        yield server.url


@contextlib.contextmanager
def trickling() -> Iterator[str]:
    answer = b'{"results": [{"index": 0, "relevance_score": 0.5}]}'
    with LoopbackServer(lambda number, body: Reply(200, answer, trickle_s=0.05), lifetime_s=600) as server:
        yield server.url


SERVERS: dict[str, Callable[[], contextlib.AbstractContextManager[str]]] = {
    "accepts, never answers": silent,
    "never accepts": never_accepting,
    "trickles 1 byte / 50 ms": trickling,
}


def seconds_until_done(call: Callable[[], Any]) -> float:
    started = time.monotonic()
    with contextlib.suppress(Exception):  # the point is how long the call took, answered or not
        call()
    return time.monotonic() - started


def sync_call(reranker: RemoteReranker) -> Callable[[], Any]:
    return lambda: reranker.score("q", ["a"])


def async_call(reranker: RemoteReranker) -> Callable[[], Any]:
    return lambda: asyncio.run(reranker.ascore("q", ["a"]))


async def many(stage: SecondStage, calls: int) -> int:
    selections = await asyncio.gather(*(stage.arun(Query("q"), DOCUMENTS) for _ in range(calls)))
    return sum(selection.failed for selection in selections)


def deadline_rows(repeat: int, timeouts: list[float | None]) -> list[str]:
    rows = []
    for name, server in SERVERS.items():
        with server() as url:
            for timeout in timeouts:
                reranker = RemoteReranker(url) if timeout is None else RemoteReranker(url, timeout=timeout)
                sync = [seconds_until_done(sync_call(reranker)) for _ in range(repeat)]
                asynchronous = [seconds_until_done(async_call(reranker)) for _ in range(repeat)]
                label = f"{reranker.timeout:g} (default)" if timeout is None else f"{timeout:g}"
                rows.append(
                    f"| {name} | {label} | {min(sync):.3f} / {max(sync):.3f} | "
                    f"{min(asynchronous):.3f} / {max(asynchronous):.3f} |"
                )
                reranker.close()
    return rows


def thread_rows(calls: int, timeout_s: float) -> list[str]:
    rows = []
    with silent() as url:
        remote = RemoteReranker(url)
        for label, reranker in (("RemoteReranker (with_timeout)", remote), ("reference: worker thread", None)):
            stage = SecondStage(reranker or WithoutDeadline(remote), top_n=1, timeout_s=timeout_s)
            before = threading.active_count()
            started = time.monotonic()
            failed = sum(stage.run(Query("q"), DOCUMENTS).failed for _ in range(calls))
            per_call = (time.monotonic() - started) / calls
            after = threading.active_count()
            rows.append(f"| {label} | sync | {calls} | {failed} | {per_call:.3f} | {before} | {after} |")
            if reranker is not None:
                before = threading.active_count()
                started = time.monotonic()
                failed = asyncio.run(many(stage, calls))
                elapsed = time.monotonic() - started
                rows.append(
                    f"| {label} | async, {calls} at once | {calls} | {failed} | {elapsed:.3f} (all) | "
                    f"{before} | {threading.active_count()} |"
                )
    return rows


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--repeat", type=int, default=3, help="calls per cell (default 3)")
    parser.add_argument("--timeout", type=float, default=2.0, help="the budget measured (default 2)")
    parser.add_argument(
        "--default-timeout", action="store_true", help="also measure the default settings (60 s per call)"
    )
    parser.add_argument("--calls", type=int, default=40, help="adapter calls for the thread count (default 40)")
    parser.add_argument("--timeout-s", type=float, default=0.5, help="the adapters' timeout_s (default 0.5)")
    options = parser.parse_args(argv)
    logging.getLogger("lychee_rerank").setLevel(logging.ERROR)  # not one fail-open warning per call
    timeouts: list[float | None] = [options.timeout] + ([None] if options.default_timeout else [])
    print("| server | timeout (s) | sync: min / max (s) | async: min / max (s) |")
    print("| --- | --- | --- | --- |")
    print("\n".join(deadline_rows(options.repeat, timeouts)))
    print()
    print("| adapter's reranker | path | calls | failed open | s per call | threads before | threads after |")
    print("| --- | --- | --- | --- | --- | --- | --- |")
    print("\n".join(thread_rows(options.calls, options.timeout_s)))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
