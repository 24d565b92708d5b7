"""How one call to the rerank service spends its deadline: attempts, waits, giving up.

Every decision lives in one generator, :func:`plan`: it yields what to do next (:class:`Send` an attempt,
:class:`Wait` before a retry), is sent each attempt's outcome (an :class:`~lychee_rerank.core.answers.Answer`
or the ``httpx.TransportError`` it ended with) and returns the answer to keep, or raises. :func:`post` and
:func:`apost` only carry the steps out, with a sync or an async client, so the two paths cannot drift
apart (as httpx shares its ``_send_handling_*`` logic between its clients).

The rules, for a budget of ``timeout`` seconds from the start of the call:

- Retried: no answer arrived and none is coming, so the request did not run to an answer: a connection
  that could not be made (``ConnectError``, ``ConnectTimeout``) or was closed before the answer was in
  (``RemoteProtocolError``, ``ReadError``, ``WriteError``); and a 429 or 503, after ``Retry-After`` when
  the service sends one, else after ``backoff_s * 2**retry`` (capped at ``max_backoff_s``). At most
  ``max_retries`` times in all.
- Not retried: a read (or write, or pool) timeout, as the request may still be running there; any other
  answer is final.
- Several endpoints (:mod:`lychee_rerank.core.endpoints`): the call starts on the next in turn; a retried
  failure, or a 5xx, moves it to an endpoint it has not tried yet, at once; only once each has failed does
  it wait, for the endpoint whose wait ends first. While endpoints are left to try, a connect gets an equal
  share of the time left, so one host that drops packets cannot spend the whole budget. Every failure rests
  its endpoint in the pool, for later calls too.
- A wait that does not fit in what is left of the budget is not started: the call raises at once, saying
  when the service asked to be retried.
- Each attempt gets only the time left: as its httpx connect/read/write/pool timeouts, as the deadline of
  every socket operation (:mod:`lychee_rerank.core.deadline`), and between the chunks of the body.
"""

from __future__ import annotations

import asyncio
import email.utils
import math
import threading
import time
from collections.abc import AsyncIterator, Generator, Iterator
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import cast

import httpx

from lychee_rerank.core.answers import Answer, server_says
from lychee_rerank.core.deadline import async_deadline_transport, deadline_at, deadline_transport
from lychee_rerank.core.endpoints import Endpoint, EndpointPool
from lychee_rerank.core.errors import RemoteRerankerError

RETRY_STATUSES = frozenset({429, 503})
"""Answers that mean "overloaded" or "not ready yet": retried after ``Retry-After`` or a backoff."""

CONNECTION_FAILURES = (
    httpx.ConnectError,
    httpx.ConnectTimeout,
    httpx.RemoteProtocolError,
    httpx.ReadError,
    httpx.WriteError,
)
"""Transport errors after which no answer is coming (no connection, or it was closed): retried."""


@dataclass(frozen=True)
class Policy:
    """The caller's budget and retry settings for one call (see the module docstring).

    Attributes:
        timeout: Seconds the whole call may take.
        max_retries: Retries at most.
        backoff_s: The first backoff; doubles with each retry.
        max_backoff_s: Cap on one backoff (not on a ``Retry-After``, which is what the service asked).
    """

    timeout: float
    max_retries: int
    backoff_s: float
    max_backoff_s: float


@dataclass(frozen=True)
class Send:
    """Send the request to ``endpoint``; it must connect by ``connect_by`` and end by ``deadline``.

    Both are ``time.monotonic`` moments.
    """

    endpoint: Endpoint
    deadline: float
    connect_by: float


@dataclass(frozen=True)
class Wait:
    """Sleep ``seconds`` before the next attempt."""

    seconds: float


Outcome = Answer | httpx.TransportError
Plan = Generator["Send | Wait", "Outcome | None", Answer]


class StillArriving(httpx.ReadTimeout):
    """The deadline passed between two chunks of the answer's body."""


def retry_after_s(headers: httpx.Headers) -> float | None:
    """Seconds a ``Retry-After`` header asks to wait (a number or an HTTP date); ``None`` if absent or unreadable.

    Example:
        >>> retry_after_s(httpx.Headers({"Retry-After": "3"}))
        3.0
    """
    text = headers.get("retry-after", "").strip()
    if not text:
        return None
    try:
        seconds = float(text)
    except ValueError:
        try:
            moment = email.utils.parsedate_to_datetime(text)
        except (TypeError, ValueError):
            return None
        if moment.tzinfo is None:
            moment = moment.replace(tzinfo=timezone.utc)
        seconds = (moment - datetime.now(timezone.utc)).total_seconds()
    return max(seconds, 0.0) if math.isfinite(seconds) else None


def described(error: BaseException) -> str:
    """``Type: message`` of a transport error; a timeout by its type alone (its text differs sync and async)."""
    if isinstance(error, httpx.TimeoutException) or not str(error):
        return type(error).__name__
    return f"{type(error).__name__}: {error}"


def plan(policy: Policy, pool: EndpointPool) -> Plan:
    """The steps of one call to the service at the endpoints of ``pool``.

    Raises:
        RemoteRerankerError: The service did not answer in time, stayed overloaded or unreachable, or the
            transport failed otherwise; ``status`` is the last answer's, if any.
    """
    deadline = time.monotonic() + policy.timeout
    order = pool.order()
    failures: dict[Endpoint, int] = {}  # per endpoint, in this call
    ready_at: dict[Endpoint, float] = {}  # when each failed endpoint may be tried again in this call
    endpoint, retries = order[0], 0
    while True:
        untried = [other for other in order if other not in failures and other != endpoint]
        now = time.monotonic()
        outcome = yield Send(endpoint, deadline, now + (deadline - now) / (1 + len(untried)))
        if outcome is None:
            raise RuntimeError("the driver sent no outcome for a Send step")
        if isinstance(outcome, Answer) and outcome.status not in RETRY_STATUSES and outcome.status < 500:
            pool.succeeded(endpoint)
            return outcome
        asked = retry_after_s(outcome.headers) if isinstance(outcome, Answer) else None
        pool.failed(endpoint, at_least_s=asked)
        failures[endpoint] = failures.get(endpoint, 0) + 1
        if isinstance(outcome, Answer) and outcome.status not in RETRY_STATUSES:
            # A 5xx moves the call to an endpoint it has not tried; with none left (or no retry, no time) it is final.
            if not untried or retries >= policy.max_retries or time.monotonic() >= deadline:
                return outcome
            endpoint, retries = untried[0], retries + 1
            continue
        problem = _retryable(outcome, policy, endpoint, failures)
        backoff = min(policy.backoff_s * 2 ** (failures[endpoint] - 1), policy.max_backoff_s)
        ready_at[endpoint] = time.monotonic() + (backoff if asked is None else asked)
        following = untried[0] if untried else min(ready_at, key=ready_at.__getitem__)
        delay = max(ready_at.get(following, 0.0) - time.monotonic(), 0.0) if not untried else 0.0
        left = deadline - time.monotonic()
        where = _where(endpoint, failures)
        if retries >= policy.max_retries:
            raise _giving_up(outcome, f"the reranking service at {where} is still {problem} after {retries} retries")
        if left <= 0:
            raise _giving_up(
                outcome, f"the reranking service at {where} is {problem}, and timeout={policy.timeout:g} s is spent"
            )
        if delay >= left:
            when = "it asked to be retried" if asked is not None else "the next retry would be"
            raise _giving_up(
                outcome,
                f"the reranking service at {where} is {problem}; {when} in {delay:.3g} s, which does not fit in "
                f"the {left:.2f} s left of timeout={policy.timeout:g} s; not retried",
            )
        if delay > 0:
            yield Wait(delay)
        endpoint, retries = following, retries + 1


def _where(endpoint: Endpoint, failures: dict[Endpoint, int]) -> str:
    others = [other.base for other in failures if other != endpoint]
    return endpoint.base if not others else f"{endpoint.base} (also tried {', '.join(others)})"


def _retryable(outcome: Outcome, policy: Policy, endpoint: Endpoint, failures: dict[Endpoint, int]) -> str:
    """What a retryable outcome means ("overloaded (HTTP 429: ...)"); raises for one that is final."""
    if isinstance(outcome, Answer):
        state = "overloaded" if outcome.status == 429 else "unavailable"
        return f"{state} (HTTP {outcome.status}: {server_says(outcome)})"
    if isinstance(outcome, CONNECTION_FAILURES):
        return f"unreachable ({described(outcome)})"
    where = _where(endpoint, failures)
    if isinstance(outcome, httpx.TimeoutException):
        verb = "did not finish its answer" if isinstance(outcome, StillArriving) else "did not answer"
        raise RemoteRerankerError(
            f"the reranking service at {where} {verb} within timeout={policy.timeout:g} s "
            f"({described(outcome)}); not retried, as the request may still be running there"
        ) from outcome
    raise RemoteRerankerError(f"the request to the reranking service at {where} failed: {described(outcome)}") from (
        outcome
    )


def _giving_up(outcome: Outcome, message: str) -> RemoteRerankerError:
    error = RemoteRerankerError(message, status=outcome.status if isinstance(outcome, Answer) else None)
    if isinstance(outcome, BaseException):
        error.__cause__ = outcome
    return error


class Connections:
    """The HTTP clients of a reranker, shared with its ``with_timeout`` views.

    The sync client (and its connection pool) is made on first use. An ``httpx.AsyncClient`` is bound to the
    event loop it first ran on, so the async path keeps one per asyncio event loop, made on the loop's first
    call: calls on one loop reuse its kept-alive connections (no new TCP and TLS handshake per call). The
    clients of loops that have been closed are dropped at the next call (their pooled connections refer to
    their loop, so a weak mapping would never let go of either). Under another async library (trio) each
    call has its own client.
    """

    def __init__(
        self,
        headers: dict[str, str],
        transport: httpx.BaseTransport | None,
        async_transport: httpx.AsyncBaseTransport | None,
    ) -> None:
        self._headers = headers
        self._transport = transport
        self._async_transport = async_transport
        self._client: httpx.Client | None = None
        self._async_clients: dict[asyncio.AbstractEventLoop, httpx.AsyncClient] = {}
        self._lock = threading.Lock()

    def client(self) -> httpx.Client:
        """The shared sync client."""
        with self._lock:
            if self._client is None:
                transport = self._transport if self._transport is not None else deadline_transport()
                self._client = httpx.Client(headers=self._headers, transport=transport)
            return self._client

    def async_client(self) -> tuple[httpx.AsyncClient, bool]:
        """The running event loop's async client, and whether it is the caller's to close (a one-call client
        outside asyncio)."""
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            return self._new_async_client(), True
        with self._lock:
            client = self._async_clients.get(loop)
            if client is None or client.is_closed:
                for ended in [other for other in self._async_clients if other.is_closed()]:
                    del self._async_clients[ended]
                client = self._async_clients[loop] = self._new_async_client()
            return client, False

    def _new_async_client(self) -> httpx.AsyncClient:
        transport = self._async_transport if self._async_transport is not None else async_deadline_transport()
        return httpx.AsyncClient(headers=self._headers, transport=transport)

    async def aclose(self) -> None:
        """Closes the running event loop's async client (its kept-alive connections)."""
        with self._lock:
            client = self._async_clients.pop(asyncio.get_running_loop(), None)
        if client is not None:
            await client.aclose()

    def close(self) -> None:
        """Closes the sync client; the next call makes a new one."""
        with self._lock:
            if self._client is not None:
                self._client.close()
                self._client = None


def post(steps: Plan, connections: Connections, content: bytes) -> Answer:
    """Carries ``steps`` out with the sync client, posting ``content`` (JSON) on every attempt."""
    step = next(steps)
    while True:
        outcome = None
        if isinstance(step, Wait):
            time.sleep(step.seconds)
        else:
            outcome = _exchange(connections.client(), step, content)
        try:
            step = steps.send(outcome)
        except StopIteration as done:
            return cast(Answer, done.value)


async def apost(steps: Plan, connections: Connections, content: bytes) -> Answer:
    """:func:`post` with an async client: the same steps, awaited."""
    step = next(steps)
    client, owned = connections.async_client()
    try:
        while True:
            outcome = None
            if isinstance(step, Wait):
                await asyncio.sleep(step.seconds)
            else:
                outcome = await _aexchange(client, step, content)
            try:
                step = steps.send(outcome)
            except StopIteration as done:
                return cast(Answer, done.value)
    finally:
        if owned:
            await client.aclose()


def _timeouts(send: Send) -> httpx.Timeout:
    now = time.monotonic()
    return httpx.Timeout(max(send.deadline - now, 0.001), connect=max(send.connect_by - now, 0.001))


def _until(chunks: Iterator[bytes], deadline: float) -> Iterator[bytes]:
    # With a transport of the caller's own, socket reads are bounded only by the attempt's timeouts:
    # stopping between chunks keeps a trickled body from running on far past the deadline.
    for chunk in chunks:
        if time.monotonic() > deadline:
            raise StillArriving("the answer was still arriving at the deadline")
        yield chunk


async def _auntil(chunks: AsyncIterator[bytes], deadline: float) -> AsyncIterator[bytes]:
    async for chunk in chunks:
        if time.monotonic() > deadline:
            raise StillArriving("the answer was still arriving at the deadline")
        yield chunk


_JSON = {"Content-Type": "application/json"}


def _exchange(client: httpx.Client, send: Send, content: bytes) -> Outcome:
    request = client.build_request("POST", send.endpoint.url, content=content, headers=_JSON, timeout=_timeouts(send))
    with deadline_at(send.deadline):
        try:
            response = client.send(request, stream=True, auth=send.endpoint.auth)
            try:
                body = b"".join(_until(response.iter_bytes(), send.deadline))
            finally:
                response.close()
        except httpx.TransportError as error:
            return error
    return Answer(response.status_code, response.headers, body)


async def _aexchange(client: httpx.AsyncClient, send: Send, content: bytes) -> Outcome:
    request = client.build_request("POST", send.endpoint.url, content=content, headers=_JSON, timeout=_timeouts(send))
    with deadline_at(send.deadline):
        try:
            response = await client.send(request, stream=True, auth=send.endpoint.auth)
            try:
                body = b"".join([chunk async for chunk in _auntil(response.aiter_bytes(), send.deadline)])
            finally:
                await response.aclose()
        except httpx.TransportError as error:
            return error
    return Answer(response.status_code, response.headers, body)
