"""One worker thread in front of the model, merging concurrent requests into engine calls.

Requests arrive *prepared*: their images decoded and their pairs tokenised before they are queued (as
text-embeddings-inference tokenises before its queue), so the worker only runs the model and the merge
budget counts exact tokens. Requests wait in a bounded queue. The worker takes the oldest, then keeps
taking queued requests for at most ``max_wait_ms`` or until the token budget is used, and scores what it
took back to back: requests that share a group (query and instruction) are scored in one engine call, so
their documents share the query's prefix computation and batches. Each request has a
:class:`concurrent.futures.Future`; one that is cancelled before its turn (client gone, deadline passed) is
skipped. A full queue refuses at once (:class:`QueueFullError`), which the service answers 429 with
Retry-After.

Small requests of *different* groups are merged too, in one call without prefix reuse: their pairs share
batches and forward passes. A group of ``MIN_PREFIX_DOCUMENTS`` or more documents is scored on its own
instead, where reusing its query prefix saves more than sharing batches would.
"""

from __future__ import annotations

import logging
import math
import threading
import time
from collections import deque
from collections.abc import Callable, Hashable, Sequence
from concurrent.futures import Future
from dataclasses import dataclass, field
from typing import Generic, Protocol, TypeVar

from lychee_rerank.core.inputs import Document, Query

logger = logging.getLogger(__name__)

ScoreFunction = Callable[[Query, list[Document], "str | None"], list[float]]
"""Scores one query against documents: the engine's ``score``."""

MIN_PREFIX_DOCUMENTS = 8  # from this many documents, a request's own prefix reuse beats sharing batches

IMAGE_TOKEN_ESTIMATE = 256  # what one image adds to a pair, for budgeting only


class Work(Protocol):
    """A prepared request as the scheduler sees it."""

    @property
    def tokens(self) -> int:
        """Its tokens, for the merge budget."""
        ...

    @property
    def size(self) -> int:
        """Its documents (one score each)."""
        ...

    @property
    def group(self) -> Hashable:
        """Requests of one group (same query and instruction) share a prompt prefix."""
        ...


W = TypeVar("W", bound=Work)

BatchFunction = Callable[[Sequence[W], bool], list[list[float]]]
"""Scores several prepared requests in one call (``share_prefix`` when they are one group); scores per request."""


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
class _Job(Generic[W]):
    work: W
    future: Future[list[float]]
    enqueued: float


def estimate_tokens(query: Query, documents: list[Document]) -> int:
    """A cheap upper-ish estimate of a request's tokens, for requests that are not tokenised (never exact)."""

    def size(text: str | None, image: object) -> int:
        return len(text or "") // 3 + 1 + (IMAGE_TOKEN_ESTIMATE if image is not None else 0)

    return sum(size(document.text, document.image) + 64 for document in documents) + size(query.text, query.image)


def group_key(query: Query, instruction: str | None) -> Hashable:
    """What requests must share to share a prompt prefix."""
    image = query.image
    # PIL images are not hashable; the same object still merges.
    image_key = image if isinstance(image, (str, bytes)) else id(image)
    return (query.text, image_key, instruction)


@dataclass(frozen=True)
class PlainRequest:
    """An unprepared request, for a scheduler in front of a plain ``score`` function (tests, wrappers)."""

    query: Query
    documents: list[Document]
    instruction: str | None

    @property
    def tokens(self) -> int:
        """An estimate: nothing was tokenised."""
        return estimate_tokens(self.query, self.documents)

    @property
    def size(self) -> int:
        """The documents."""
        return len(self.documents)

    @property
    def group(self) -> Hashable:
        """Query and instruction."""
        return group_key(self.query, self.instruction)


def score_plain(score: ScoreFunction) -> BatchFunction[PlainRequest]:
    """A :data:`BatchFunction` calling ``score`` once per group of requests (one query, their documents)."""

    def run(requests: Sequence[PlainRequest], share_prefix: bool) -> list[list[float]]:
        groups: dict[Hashable, list[int]] = {}
        for number, request in enumerate(requests):
            groups.setdefault(request.group, []).append(number)
        results: list[list[float]] = [[] for _ in requests]
        for numbers in groups.values():
            first = requests[numbers[0]]
            scores = score(first.query, [d for n in numbers for d in requests[n].documents], first.instruction)
            start = 0
            for number in numbers:
                results[number] = scores[start : start + requests[number].size]
                start += requests[number].size
        return results

    return run


class Scheduler(Generic[W]):
    """Queues prepared requests and scores them on one worker thread.

    Args:
        score: Scores several prepared requests in one call (:data:`BatchFunction`): the engine's
            ``score_encoded``, or :func:`score_plain` around a plain ``score`` function.
        max_queue: Requests allowed to wait; more raise :class:`QueueFullError`.
        max_batch_tokens: Tokens (exact for encoded requests) merged into one round.
        max_wait_ms: How long to wait for more requests once one is there.
        on_round: Called after each engine call with the number of documents scored (metrics).
        on_dropped: Called with the number of requests skipped because they were cancelled (metrics).
    """

    def __init__(
        self,
        score: BatchFunction[W],
        *,
        max_queue: int = 256,
        max_batch_tokens: int = 16384,
        max_wait_ms: float = 5.0,
        on_round: Callable[[int], None] | None = None,
        on_dropped: Callable[[int], None] | None = None,
    ) -> None:
        self._score = score
        self.max_queue = max_queue
        self.max_batch_tokens = max_batch_tokens
        self.max_wait_s = max_wait_ms / 1000
        self.stats = SchedulerStats()
        self._on_round = on_round
        self._on_dropped = on_dropped
        self._queue: deque[_Job[W]] = deque()
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

    def queued(self) -> list[W]:
        """The requests waiting, oldest first (not the round being scored)."""
        with self._condition:
            return [job.work for job in self._queue]

    # -- submitting -------------------------------------------------------------------------------

    def submit(self, work: W) -> Future[list[float]]:
        """Queues one prepared request; its future gets the scores in document order, or the engine's error.

        Raises:
            QueueFullError: ``max_queue`` requests are already waiting.
            SchedulerClosedError: The service is shutting down.
        """
        future: Future[list[float]] = Future()
        if not work.size:
            future.set_result([])
            return future
        job = _Job(work, future, time.monotonic())
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

    def _take_round(self) -> list[_Job[W]] | None:
        """Blocks for a first request, then gathers more within the wait and the budget."""
        with self._condition:
            while not self._queue and not self._closed:
                self._condition.wait()
            if self._closed:
                return None
            taken = [self._queue.popleft()]
            budget = self.max_batch_tokens - taken[0].work.tokens
            deadline = time.monotonic() + self.max_wait_s
            while budget > 0:
                if self._queue:
                    if self._queue[0].work.tokens > budget:
                        break
                    job = self._queue.popleft()
                    taken.append(job)
                    budget -= job.work.tokens
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
            groups: dict[Hashable, list[_Job[W]]] = {}
            for job in live:
                groups.setdefault(job.work.group, []).append(job)
            small = [key for key, jobs in groups.items() if sum(job.work.size for job in jobs) < MIN_PREFIX_DOCUMENTS]
            if len(small) > 1:
                self._score_jobs([job for key in small for job in groups.pop(key)], share_prefix=False)
            for jobs in groups.values():
                self._score_jobs(jobs, share_prefix=True)
            elapsed = time.monotonic() - started
            self._seconds_per_round = 0.8 * self._seconds_per_round + 0.2 * elapsed

    def _score_jobs(self, jobs: list[_Job[W]], *, share_prefix: bool) -> None:
        """Scores jobs in one call; when it fails, each job alone, so one bad request fails only itself."""
        try:
            self.stats.engine_calls += 1
            results = self._score([job.work for job in jobs], share_prefix)
        except Exception as error:
            if len(jobs) > 1:
                for job in jobs:
                    self._score_jobs([job], share_prefix=True)
                return
            self.stats.failed += 1
            jobs[0].future.set_exception(error)
            return
        documents = sum(job.work.size for job in jobs)
        self.stats.documents += documents
        if self._on_round is not None:
            self._on_round(documents)
        if len(jobs) > 1:
            self.stats.merged_requests += len(jobs)
        for job, scores in zip(jobs, results, strict=True):
            job.future.set_result(scores)
            self.stats.completed += 1
