"""How one call to the rerank service spends its deadline: attempts, waits, giving up.

Every decision lives in one generator, :func:`plan`: it yields what to do next (:class:`Send` an attempt,
:class:`Wait` before a retry), is sent each attempt's outcome (an :class:`~lychee_rerank.core.answers.Answer`
or the ``httpx.TransportError`` it ended with) and returns the answer to keep, or raises. :func:`post` and
:func:`apost` only carry the steps out, with a sync or an async client, so the two paths cannot drift
apart (as httpx shares its ``_send_handling_*`` logic between its clients).

The rules, for a budget of ``timeout`` seconds from the start of the call:

- Retried: a connection that could not be made (``ConnectError``, ``ConnectTimeout``), and a 429 or 503,
  after ``Retry-After`` when the service sends one, else after ``backoff_s * 2**retry`` (capped at
  ``max_backoff_s``), at most ``max_retries`` times. The request certainly did not run to an answer.
- Not retried: a read (or write, or pool) timeout, as the request may still be running there, and every
  other answer, which is final.
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
from lychee_rerank.core.errors import RemoteRerankerError

RETRY_STATUSES = frozenset({429, 503})
"""Answers that mean "overloaded" or "not ready yet": retried after ``Retry-After`` or a backoff."""

CONNECTION_FAILURES = (httpx.ConnectError, httpx.ConnectTimeout)
"""Transport errors after which the request certainly did not reach the service: retried."""


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
    """Send the request to ``url``; everything about it stops at ``deadline`` (``time.monotonic``)."""

    url: str
    deadline: float


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


def plan(policy: Policy, url: str, where: str) -> Plan:
    """The steps of one call to ``url`` (``where`` names the service in messages, without credentials).

    Raises:
        RemoteRerankerError: The service did not answer in time, stayed overloaded or unreachable, or the
            transport failed otherwise; ``status`` is the last answer's, if any.
    """
    deadline = time.monotonic() + policy.timeout
    retries = 0
    while True:
        outcome = yield Send(url, deadline)
        if outcome is None:
            raise RuntimeError("the driver sent no outcome for a Send step")
        if isinstance(outcome, Answer) and outcome.status not in RETRY_STATUSES:
            return outcome
        problem = _retryable(outcome, policy, where)
        asked = retry_after_s(outcome.headers) if isinstance(outcome, Answer) else None
        delay = min(policy.backoff_s * 2**retries, policy.max_backoff_s) if asked is None else asked
        left = deadline - time.monotonic()
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
                f"the reranking service at {where} is {problem}; {when} in {delay:g} s, which does not fit in "
                f"the {left:.2f} s left of timeout={policy.timeout:g} s; not retried",
            )
        yield Wait(delay)
        retries += 1


def _retryable(outcome: Outcome, policy: Policy, where: str) -> str:
    """What a retryable outcome means ("overloaded (HTTP 429: ...)"); raises for one that is final."""
    if isinstance(outcome, Answer):
        state = "overloaded" if outcome.status == 429 else "unavailable"
        return f"{state} (HTTP {outcome.status}: {server_says(outcome)})"
    if isinstance(outcome, CONNECTION_FAILURES):
        return f"unreachable ({described(outcome)})"
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
    event loop it first ran on, so the async path makes one per call.
    """

    def __init__(
        self,
        headers: dict[str, str],
        auth: httpx.Auth | None,
        transport: httpx.BaseTransport | None,
        async_transport: httpx.AsyncBaseTransport | None,
    ) -> None:
        self._headers = headers
        self._auth = auth
        self._transport = transport
        self._async_transport = async_transport
        self._client: httpx.Client | None = None
        self._lock = threading.Lock()

    def client(self) -> httpx.Client:
        """The shared sync client."""
        with self._lock:
            if self._client is None:
                transport = self._transport if self._transport is not None else deadline_transport()
                self._client = httpx.Client(headers=self._headers, auth=self._auth, transport=transport)
            return self._client

    def async_client(self) -> httpx.AsyncClient:
        """A new async client, for one call."""
        transport = self._async_transport if self._async_transport is not None else async_deadline_transport()
        return httpx.AsyncClient(headers=self._headers, auth=self._auth, transport=transport)

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
    async with connections.async_client() as client:
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


def _timeouts(deadline: float) -> httpx.Timeout:
    return httpx.Timeout(max(deadline - time.monotonic(), 0.001))


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
    request = client.build_request("POST", send.url, content=content, headers=_JSON, timeout=_timeouts(send.deadline))
    with deadline_at(send.deadline):
        try:
            response = client.send(request, stream=True)
            try:
                body = b"".join(_until(response.iter_bytes(), send.deadline))
            finally:
                response.close()
        except httpx.TransportError as error:
            return error
    return Answer(response.status_code, response.headers, body)


async def _aexchange(client: httpx.AsyncClient, send: Send, content: bytes) -> Outcome:
    request = client.build_request("POST", send.url, content=content, headers=_JSON, timeout=_timeouts(send.deadline))
    with deadline_at(send.deadline):
        try:
            response = await client.send(request, stream=True)
            try:
                body = b"".join([chunk async for chunk in _auntil(response.aiter_bytes(), send.deadline)])
            finally:
                await response.aclose()
        except httpx.TransportError as error:
            return error
    return Answer(response.status_code, response.headers, body)
