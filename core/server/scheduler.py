"""One worker thread in front of the model, merging concurrent requests into engine calls.

Requests wait in a bounded queue. The worker takes the oldest, then keeps taking queued requests for at
most ``max_wait_ms`` or until the token budget is used, and scores what it took back to back: requests
that share (query, instruction) are concatenated into one engine call, so their documents share the
query's prefix computation and batches. Each request has a :class:`concurrent.futures.Future`; one that is
cancelled before its turn (client gone, timeout) is skipped. A full queue refuses at once
(:class:`QueueFullError`), which the service answers 429 with Retry-After.

Small requests with *different* queries are merged too, through ``score_groups`` (the engine's): their
pairs share batches and forward passes. A group of ``MIN_PREFIX_DOCUMENTS`` or more documents is scored
on its own instead, where reusing its query prefix saves more than sharing batches would.
"""

from __future__ import annotations

import logging
import math
import threading
import time
from collections import deque
from collections.abc import Callable, Hashable
from concurrent.futures import Future
from dataclasses import dataclass, field

from lychee_rerank.core.inputs import Document, Query

logger = logging.getLogger(__name__)

ScoreFunction = Callable[[Query, list[Document], "str | None"], list[float]]
"""Scores one query against documents: the engine's ``score``."""

GroupsFunction = Callable[[list[tuple[Query, list[Document], "str | None"]]], list[list[float]]]
"""Scores several (query, documents, instruction) groups in shared batches: the engine's ``score_groups``."""

MIN_PREFIX_DOCUMENTS = 8  # from this many documents, a request's own prefix reuse beats sharing batches

IMAGE_TOKEN_ESTIMATE = 256  # what one image adds to a pair, for budgeting only


class QueueFullError(Exception):
    """Too many requests are waiting; retry after ``retry_after_s``."""

    def __init__(self, depth: int, retry_after_s: int) -> None:
        super().__init__(f"{depth} requests are already waiting for the model; retry in {retry_after_s} s")
        self.retry_after_s = retry_after_s


class SchedulerClosedError(Exception):
    """The scheduler is shut down."""


@dataclass
class SchedulerStats:
    """What the scheduler did: requests in, engine calls out, merges and drops."""

    submitted: int = 0
    completed: int = 0
    failed: int = 0
    cancelled: int = 0
    engine_calls: int = 0
    rounds: int = 0
    merged_requests: int = 0  # requests that shared an engine call with another
    documents: int = 0
    round_sizes: deque[int] = field(default_factory=lambda: deque(maxlen=1024))  # the most recent rounds


@dataclass
class _Job:
    query: Query
    documents: list[Document]
    instruction: str | None
    tokens: int
    future: Future[list[float]]
    enqueued: float


def estimate_tokens(query: Query, documents: list[Document]) -> int:
    """A cheap upper-ish estimate of a request's tokens, for the merge budget (never exact)."""

    def size(text: str | None, image: object) -> int:
        return len(text or "") // 3 + 1 + (IMAGE_TOKEN_ESTIMATE if image is not None else 0)

    return sum(size(document.text, document.image) + 64 for document in documents) + size(query.text, query.image)


def _group_key(job: _Job) -> Hashable:
    image = job.query.image
    # PIL images are not hashable; the same object still merges.
    image_key = image if isinstance(image, (str, bytes)) else id(image)
    return (job.query.text, image_key, job.instruction)


class Scheduler:
    """Queues scoring requests and runs them on one worker thread.

    Args:
        score: The engine call, ``score(query, documents, instruction) -> scores``.
        score_groups: Scores several small groups in shared batches; without it each group is one call.
        max_queue: Requests allowed to wait; more raise :class:`QueueFullError`.
        max_batch_tokens: Estimated tokens merged into one round.
        max_wait_ms: How long to wait for more requests once one is there.
        on_round: Called after each engine call with the number of documents scored (metrics).
        on_dropped: Called with the number of requests skipped because they were cancelled (metrics).
    """

    def __init__(
        self,
        score: ScoreFunction,
        *,
        score_groups: GroupsFunction | None = None,
        max_queue: int = 256,
        max_batch_tokens: int = 16384,
        max_wait_ms: float = 5.0,
        on_round: Callable[[int], None] | None = None,
        on_dropped: Callable[[int], None] | None = None,
    ) -> None:
        self._score = score
        self._score_groups = score_groups
        self.max_queue = max_queue
        self.max_batch_tokens = max_batch_tokens
        self.max_wait_s = max_wait_ms / 1000
        self.stats = SchedulerStats()
        self._on_round = on_round
        self._on_dropped = on_dropped
        self._queue: deque[_Job] = deque()
        self._condition = threading.Condition()
        self._closed = False
        self._seconds_per_round = 0.05  # a running estimate, for Retry-After
        self._thread = threading.Thread(target=self._run, name="lychee-scheduler", daemon=True)

    # -- lifecycle --------------------------------------------------------------------------------

    def start(self) -> None:
        """Starts the worker thread."""
        if not self._thread.is_alive():
            self._thread.start()

    def close(self, timeout: float | None = 5.0) -> None:
        """Stops taking requests, cancels those still queued, and waits for the worker."""
        with self._condition:
            self._closed = True
            pending = list(self._queue)
            self._queue.clear()
            self._condition.notify_all()
        for job in pending:
            job.future.cancel()
        if self._thread.is_alive():
            self._thread.join(timeout)

    @property
    def running(self) -> bool:
        """Whether the worker thread is alive and taking requests."""
        return self._thread.is_alive() and not self._closed

    @property
    def depth(self) -> int:
        """Requests waiting (not counting the round being scored)."""
        return len(self._queue)

    # -- submitting -------------------------------------------------------------------------------

    def submit(self, query: Query, documents: list[Document], instruction: str | None) -> Future[list[float]]:
        """Queues one request; its future gets the scores in document order, or the engine's error.

        Raises:
            QueueFullError: ``max_queue`` requests are already waiting.
            SchedulerClosedError: The service is shutting down.
        """
        future: Future[list[float]] = Future()
        if not documents:
            future.set_result([])
            return future
        job = _Job(query, documents, instruction, estimate_tokens(query, documents), future, time.monotonic())
        with self._condition:
            if self._closed:
                raise SchedulerClosedError("the service is shutting down")
            if len(self._queue) >= self.max_queue:
                # Every waiting request may need a round of its own: a pessimistic, honest wait.
                raise QueueFullError(len(self._queue), max(1, math.ceil(len(self._queue) * self._seconds_per_round)))
            self._queue.append(job)
            self.stats.submitted += 1
            self._condition.notify()
        return future

    # -- the worker -------------------------------------------------------------------------------

    def _take_round(self) -> list[_Job] | None:
        """Blocks for a first request, then gathers more within the wait and the budget."""
        with self._condition:
            while not self._queue and not self._closed:
                self._condition.wait()
            if self._closed:
                return None
            taken = [self._queue.popleft()]
            budget = self.max_batch_tokens - taken[0].tokens
            deadline = time.monotonic() + self.max_wait_s
            while budget > 0:
                if self._queue:
                    if self._queue[0].tokens > budget:
                        break
                    job = self._queue.popleft()
                    taken.append(job)
                    budget -= job.tokens
                    continue
                remaining = deadline - time.monotonic()
                if remaining <= 0 or self._closed:
                    break
                self._condition.wait(remaining)
            return taken

    def _run(self) -> None:
        while True:
            taken = self._take_round()
            if taken is None:
                return
            # A job cancelled while waiting is dropped here; the others can no longer be cancelled.
            live = [job for job in taken if job.future.set_running_or_notify_cancel()]
            if len(taken) > len(live):
                self.stats.cancelled += len(taken) - len(live)
                if self._on_dropped is not None:
                    self._on_dropped(len(taken) - len(live))
            if not live:
                continue
            started = time.monotonic()
            self.stats.rounds += 1
            self.stats.round_sizes.append(len(live))
            groups: dict[Hashable, list[_Job]] = {}
            for job in live:
                groups.setdefault(_group_key(job), []).append(job)
            small = [
                key for key, jobs in groups.items() if sum(len(job.documents) for job in jobs) < MIN_PREFIX_DOCUMENTS
            ]
            if self._score_groups is not None and len(small) > 1:
                self._score_together([groups.pop(key) for key in small], self._score_groups)
            for jobs in groups.values():
                self._score_group(jobs)
            elapsed = time.monotonic() - started
            self._seconds_per_round = 0.8 * self._seconds_per_round + 0.2 * elapsed

    def _score_group(self, jobs: list[_Job]) -> None:
        first = jobs[0]
        documents = [document for job in jobs for document in job.documents]
        try:
            scores = self._call(first.query, documents, first.instruction)
        except Exception as error:
            if len(jobs) > 1:
                # One request's bad input must not fail the others: score each alone to place the error.
                for job in jobs:
                    self._score_group([job])
                return
            self.stats.failed += 1
            first.future.set_exception(error)
            return
        if len(jobs) > 1:
            self.stats.merged_requests += len(jobs)
        start = 0
        for job in jobs:
            job.future.set_result(scores[start : start + len(job.documents)])
            start += len(job.documents)
            self.stats.completed += 1

    def _score_together(self, groups: list[list[_Job]], score_groups: GroupsFunction) -> None:
        """Scores several small groups in one engine call; on an error, each group alone places it."""
        requests = [(jobs[0].query, [d for job in jobs for d in job.documents], jobs[0].instruction) for jobs in groups]
        try:
            self.stats.engine_calls += 1
            results = score_groups(requests)
        except Exception:
            for jobs in groups:
                self._score_group(jobs)
            return
        documents = sum(len(request[1]) for request in requests)
        self.stats.documents += documents
        if self._on_round is not None:
            self._on_round(documents)
        for jobs, scores in zip(groups, results, strict=True):
            self.stats.merged_requests += len(jobs)
            start = 0
            for job in jobs:
                job.future.set_result(scores[start : start + len(job.documents)])
                start += len(job.documents)
                self.stats.completed += 1

    def _call(self, query: Query, documents: list[Document], instruction: str | None) -> list[float]:
        self.stats.engine_calls += 1
        scores = self._score(query, documents, instruction)
        self.stats.documents += len(documents)
        if self._on_round is not None:
            self._on_round(len(documents))
        return scores
