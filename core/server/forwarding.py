"""HTTP requests carried from a front process to the process that holds the app, as ASGI messages.

Two halves, with any transport between them that carries picklable dicts (Ray Serve's deployment handles
in :mod:`lychee_rerank.core.server.ray_serve`):

- :class:`AppHost`, beside the model: runs the ASGI app's lifespan and answers a request given its scope
  and whole body with the messages the app sends;
- :class:`Forwarder`, in front: an ASGI app that reads a request's body, hands the request to a replica and
  passes the replica's messages on. When the replica dies before it has answered, the request goes to
  another one; when none is left within the retry budget, the answer is 503 with ``Retry-After`` in the
  service's JSON error body, so a client retries it instead of taking it for a failure of its own. An
  overloaded replica tier is answered 429 with ``Retry-After``, in the same body.

A request is replayed only while nothing of its answer has reached the client, and scoring has no effects,
so replaying it is safe.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncIterator, Callable, Coroutine
from dataclasses import dataclass
from typing import Any

from lychee_rerank.core.server.errors import send_error

logger = logging.getLogger(__name__)

Message = dict[str, Any]
ASGIApp = Callable[[dict[str, Any], Callable[..., Any], Callable[..., Any]], Coroutine[Any, Any, None]]
SendToReplica = Callable[[dict[str, Any], bytes], AsyncIterator[Message]]
"""Sends ``(scope, body)`` to a replica and iterates the ASGI messages its app sends back."""

WAITED_SCOPE_KEY = "lychee_rerank.waited_s"
"""Seconds a request spent before it reached the replica (in the front, in a queue between, in replays),
set in the scope the front hands over: the service's request deadline counts from the first arrival.
A scope is made by the server, not the client, so a client cannot set it."""

_SCOPE_KEYS = (
    "type",
    "asgi",
    "http_version",
    "method",
    "scheme",
    "path",
    "raw_path",
    "root_path",
    "query_string",
    "headers",
    "client",
    "server",
)


def portable_scope(scope: dict[str, Any]) -> dict[str, Any]:
    """The parts of an HTTP scope another process needs, as plain picklable values.

    A server puts its own objects in a scope (state, extensions, the app); those stay behind.

    Example:
        >>> portable_scope({"type": "http", "path": "/health", "headers": [(b"a", b"b")], "app": object()})
        {'type': 'http', 'path': '/health', 'headers': [(b'a', b'b')]}
    """
    portable = {key: scope[key] for key in _SCOPE_KEYS if key in scope}
    if "headers" in portable:
        portable["headers"] = [(bytes(name), bytes(value)) for name, value in portable["headers"]]
    for key in ("client", "server"):
        if portable.get(key) is not None:
            portable[key] = tuple(portable[key])
    return portable


class AppHost:
    """Runs an ASGI app inside a replica: its lifespan, and requests handed over whole.

    Args:
        app: The app (the service's FastAPI app).
        startup_timeout_s: How long the app's lifespan startup may take.
    """

    def __init__(self, app: ASGIApp, *, startup_timeout_s: float = 600.0) -> None:
        self.app = app
        self.startup_timeout_s = startup_timeout_s
        self._inbox: asyncio.Queue[Message] = asyncio.Queue()
        self._outbox: asyncio.Queue[Message] = asyncio.Queue()
        self._lifespan: asyncio.Task[None] | None = None

    async def start(self) -> None:
        """Runs the app's lifespan startup (the scheduler starts there).

        Raises:
            RuntimeError: The app's startup failed, with its message.
        """
        scope = {"type": "lifespan", "asgi": {"version": "3.0", "spec_version": "2.0"}}
        self._lifespan = asyncio.create_task(self.app(scope, self._inbox.get, self._outbox.put))
        await self._inbox.put({"type": "lifespan.startup"})
        reply = await self._lifespan_reply(self.startup_timeout_s)
        if reply.get("type") != "lifespan.startup.complete":
            self._lifespan.cancel()
            with contextlib.suppress(BaseException):
                await self._lifespan  # its error is in the message below
            raise RuntimeError(f"the service's startup failed: {reply.get('message') or reply}")

    async def stop(self, timeout_s: float = 30.0) -> None:
        """Runs the app's lifespan shutdown (the scheduler stops, queued work is refused)."""
        if self._lifespan is None or self._lifespan.done():
            return
        await self._inbox.put({"type": "lifespan.shutdown"})
        with contextlib.suppress(Exception):
            await self._lifespan_reply(timeout_s)
        self._lifespan.cancel()
        with contextlib.suppress(BaseException):
            await self._lifespan

    async def _lifespan_reply(self, timeout_s: float) -> Message:
        assert self._lifespan is not None
        reply = asyncio.ensure_future(self._outbox.get())
        done, _ = await asyncio.wait({reply, self._lifespan}, timeout=timeout_s, return_when=asyncio.FIRST_COMPLETED)
        if reply in done:
            return reply.result()
        reply.cancel()
        if self._lifespan in done:
            error = self._lifespan.exception()
            return {"type": "lifespan.failed", "message": repr(error) if error else "the lifespan ended"}
        return {"type": "lifespan.timeout", "message": f"no answer within {timeout_s:g} s"}

    async def respond(self, scope: dict[str, Any], body: bytes) -> list[Message]:
        """:meth:`handle`'s messages, all of them: for a transport that carries one answer per request."""
        return [message async for message in self.handle(scope, body)]

    async def handle(self, scope: dict[str, Any], body: bytes) -> AsyncIterator[Message]:
        """Runs one request through the app and yields every message it sends, the last body message last.

        After the body has been read, ``receive`` waits until the answer is complete and then says the client
        disconnected, as a server does. Closing this generator early (the caller went away) cancels the app's
        work on the request.
        """
        answer: asyncio.Queue[Message] = asyncio.Queue()
        finished = asyncio.Event()
        body_given = False

        async def receive() -> Message:
            nonlocal body_given
            if not body_given:
                body_given = True
                return {"type": "http.request", "body": body, "more_body": False}
            await finished.wait()
            return {"type": "http.disconnect"}

        app_task: asyncio.Task[None] = asyncio.create_task(self.app(scope, receive, answer.put))
        try:
            while True:
                message = await _next_message(answer, app_task)
                if message is None:
                    return
                yield message
                if message["type"] == "http.response.body" and not message.get("more_body", False):
                    return
        finally:
            finished.set()
            if not app_task.done():
                app_task.cancel()
                with contextlib.suppress(BaseException):
                    await app_task


async def _next_message(answer: asyncio.Queue[Message], app_task: asyncio.Task[None]) -> Message | None:
    """The app's next message; ``None`` when the app returned having sent nothing more; its error if it raised."""
    if not answer.empty():
        return answer.get_nowait()
    getter = asyncio.ensure_future(answer.get())
    try:
        done, _ = await asyncio.wait({getter, app_task}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        if not getter.done():
            getter.cancel()
    if getter in done and not getter.cancelled():
        return getter.result()
    if not answer.empty():
        return answer.get_nowait()
    app_task.result()  # raises the app's error
    return None


@dataclass(frozen=True)
class ReplicaTrouble:
    """What a failed hand-over means: ``retry`` on another replica, or answer ``status`` now.

    Attributes:
        retry: The replica died or vanished before answering; another one may answer.
        status: 429 (the replicas' queue is full) or 503 (none can be reached) when not retrying.
        retry_after_s: The ``Retry-After`` to send with that status.
        message: What the client is told.
    """

    retry: bool
    status: int = 503
    retry_after_s: float | None = None
    message: str = ""


Classify = Callable[[BaseException], "ReplicaTrouble | None"]
"""Says what an exception from the transport means, or ``None`` for a fault of our own (answered 500)."""


class Forwarder:
    """The front app: each request goes whole to a replica, replayed on another while none has answered.

    Args:
        send_to_replica: The transport to the replicas.
        classify: Reads the transport's exceptions (which mean a dead replica, which a full queue).
        retries: Replays after the first try, at most.
        backoff_s: The wait before the first replay, doubled for each next one: the replicas' router
            needs a moment to learn which replica died.
        retry_after_s: ``Retry-After`` on the 503 sent when every try failed.
        time_budget_s: The request's time from its arrival here (the service's request timeout): no replay
            starts later, and a try that has no answer by then plus ``grace_s`` is given up with 504. A
            replica answers 504 itself at the deadline; the grace lets its answer through first. Without
            this bound a request would wait as long as no replica can take it (all of them restarting).
        grace_s: See ``time_budget_s``.
        on_outcome: Told each thing the front did itself: ``"replayed"`` (a try after a dead replica),
            ``"unavailable"`` (503), ``"overloaded"`` (429), ``"timeout"`` (504), ``"error"`` (500). For
            the operator's metrics: a replica's answers are counted by the replica.
    """

    def __init__(
        self,
        send_to_replica: SendToReplica,
        classify: Classify,
        *,
        retries: int = 3,
        backoff_s: float = 0.2,
        retry_after_s: float = 1.0,
        time_budget_s: float = 120.0,
        grace_s: float = 5.0,
        on_outcome: Callable[[str], None] = lambda outcome: None,
    ) -> None:
        self.send_to_replica = send_to_replica
        self.classify = classify
        self.retries = retries
        self.backoff_s = backoff_s
        self.retry_after_s = retry_after_s
        self.time_budget_s = time_budget_s
        self.grace_s = grace_s
        self.on_outcome = on_outcome

    async def __call__(self, scope: dict[str, Any], receive: Callable[..., Any], send: Callable[..., Any]) -> None:
        if scope["type"] == "lifespan":
            await _plain_lifespan(receive, send)
            return
        if scope["type"] != "http":
            # Nothing the service serves is a WebSocket (the UI is not served through the replicas).
            await send({"type": "websocket.close", "code": 1003})
            return
        arrived = time.monotonic()
        body = await _read_body(receive)
        if body is None:
            return  # the client left before sending its body
        portable = portable_scope(scope)
        for attempt in range(self.retries + 1):
            started = False
            # The replica's deadline counts from the arrival here, not there: queueing and replays count.
            portable[WAITED_SCOPE_KEY] = time.monotonic() - arrived
            answer = _held_until_body(self.send_to_replica(dict(portable), body))
            left = self.time_budget_s + self.grace_s - (time.monotonic() - arrived)
            try:
                while True:
                    message = await asyncio.wait_for(answer.__anext__(), timeout=max(left, 0.0))
                    await send(message)
                    started = True
                    left = self.time_budget_s + self.grace_s - (time.monotonic() - arrived)
            except StopAsyncIteration:
                return
            except asyncio.CancelledError:
                raise
            except asyncio.TimeoutError:
                if started:
                    raise
                logger.warning("no replica answered %s within %g s", scope.get("path"), self.time_budget_s)
                self.on_outcome("timeout")
                await send_error(
                    send,
                    504,
                    "timeout",
                    f"no replica answered within the {self.time_budget_s:g} s allowed (all busy or starting); "
                    "retry later or send fewer documents",
                )
                return
            except Exception as error:
                trouble = self.classify(error)
                if started:
                    # Part of the answer is out: it cannot be replayed; the client sees a cut response.
                    logger.warning("a replica failed while answering %s: %s", scope.get("path"), error)
                    raise
                if trouble is None:
                    logger.exception("forwarding %s failed", scope.get("path"))
                    self.on_outcome("error")
                    await send_error(send, 500, "internal_error", "the service failed on this request; retry")
                    return
                if not trouble.retry:
                    self.on_outcome(_kind(trouble.status))
                    await send_error(
                        send,
                        trouble.status,
                        _kind(trouble.status),
                        trouble.message,
                        retry_after_s=trouble.retry_after_s,
                    )
                    return
                delay = self.backoff_s * 2**attempt
                if attempt == self.retries or time.monotonic() + delay - arrived > self.time_budget_s:
                    break
                logger.warning("a replica died before answering %s; trying another: %s", scope.get("path"), error)
                self.on_outcome("replayed")
                await asyncio.sleep(delay)
        self.on_outcome("unavailable")
        await send_error(
            send,
            503,
            "unavailable",
            "no replica could answer (one stopped while it held the request, and the others were busy or "
            "starting); retry after the Retry-After delay",
            retry_after_s=self.retry_after_s,
        )


async def _held_until_body(messages: AsyncIterator[Message]) -> AsyncIterator[Message]:
    """Holds the response's start until its first body message, so that a replica dying in between can
    still be replayed: for a plain (non-streamed) answer nothing reaches the client until it is whole."""
    start: Message | None = None
    async for message in messages:
        if message["type"] == "http.response.start" and start is None:
            start = message
            continue
        if start is not None:
            yield start
            start = None
        yield message
    if start is not None:
        yield start


async def _read_body(receive: Callable[..., Any]) -> bytes | None:
    chunks: list[bytes] = []
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            return None
        chunks.append(message.get("body", b""))
        if not message.get("more_body", False):
            return b"".join(chunks)


async def _plain_lifespan(receive: Callable[..., Any], send: Callable[..., Any]) -> None:
    while True:
        message = await receive()
        if message["type"] == "lifespan.startup":
            await send({"type": "lifespan.startup.complete"})
        elif message["type"] == "lifespan.shutdown":
            await send({"type": "lifespan.shutdown.complete"})
            return


def _kind(status: int) -> str:
    return {429: "overloaded", 503: "unavailable", 504: "timeout"}.get(status, "internal_error")
