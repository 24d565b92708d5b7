"""Connection limits in front of the app: slow or idle clients are closed, and their number is capped.

uvicorn closes an idle keep-alive connection (``timeout_keep_alive``) but has no deadline for a client
that connects and then sends its headers, or its body, a byte at a time; and once the process runs out
of file descriptors it can no longer accept anyone. This module adds, per connection, on top of uvicorn's
own HTTP/1.1 protocol (h11):

* a header deadline: the request line and headers must arrive within ``header_timeout_s`` of the
  connection being ready for a request (just opened, or the previous answer sent);
* a body deadline: the whole body must arrive within ``body_timeout_s`` of the headers;
* a cap on open connections, kept under the process's open-file limit. At the cap, the connection that
  has been stalled longest (still sending headers or a body, or idle between requests) is closed to make
  room; a connection whose request is being answered is never closed for this. When every connection is
  busy, the newcomer is answered 503 and closed.

A connection past a deadline is answered ``408`` with ``Connection: close`` when it had started a
request, and simply closed when it had sent nothing. Running out of descriptors anyway (another part of
the process holds many) makes asyncio's accept loop report an error per attempt; :class:`AcceptErrorLog`
writes that as one line at most once a second.

Example:
    >>> GuardedServer(app, ConnectionLimits(header_timeout_s=5), host="127.0.0.1", port=8000).run()  # doctest: +SKIP
"""

from __future__ import annotations

import asyncio
import json
import logging
import resource
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import Any, ClassVar

import h11
import uvicorn
from uvicorn.protocols.http.h11_impl import H11Protocol

from lychee_rerank.core.server.errors import error_body

logger = logging.getLogger(__name__)

_ACCEPT_ERROR = "socket.accept() out of system resource"
ACCEPT_BURST = 64
"""The listen backlog, which is also how many connections asyncio accepts in one go."""


@dataclass(frozen=True)
class ConnectionLimits:
    """How long a client may take to send a request, and how many connections may be open.

    Attributes:
        header_timeout_s: Time to send the request line and headers, counted from when the connection is
            ready for a request (opened, or the previous answer sent).
        body_timeout_s: Time to send the whole body, counted from the end of the headers.
        keep_alive_timeout_s: An idle keep-alive connection is closed after this long without a byte.
        max_connections: Open connections at most; lowered at start to fit the open-file limit.
    """

    header_timeout_s: float = 10.0
    body_timeout_s: float = 60.0
    keep_alive_timeout_s: float = 5.0
    max_connections: int = 1000

    def __post_init__(self) -> None:
        for name in ("header_timeout_s", "body_timeout_s", "keep_alive_timeout_s"):
            if not getattr(self, name) > 0:
                raise ValueError(f"{name} must be positive, got {getattr(self, name)!r}")
        if self.max_connections < 1:
            raise ValueError(f"max_connections must be at least 1, got {self.max_connections}")

    def fitted(self, open_file_limit: int | None = None) -> ConnectionLimits:
        """These limits with ``max_connections`` lowered to leave descriptors for the rest of the process.

        The rest (model files, image downloads, logs, and up to ``ACCEPT_BURST`` connections accepted
        in one go before the cap closes any) keeps an eighth of the limit, and never less than 128.

        Example:
            >>> ConnectionLimits(max_connections=5000).fitted(1024).max_connections
            896
        """
        limit = open_file_limit if open_file_limit is not None else _open_file_limit()
        if limit is None:
            return self
        room = max(limit - max(128, limit // 8), 1)
        return self if self.max_connections <= room else replace(self, max_connections=room)


def _open_file_limit() -> int | None:
    soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
    return None if soft == resource.RLIM_INFINITY else int(soft)


class ConnectionGuard:
    """The open connections of one server and the limits they live under (shared by its protocols)."""

    def __init__(self, limits: ConnectionLimits, clock: Callable[[], float] = time.monotonic) -> None:
        self.limits = limits
        self.clock = clock
        self.connections: dict[GuardedH11Protocol, None] = {}  # insertion-ordered set
        self.timed_out = 0
        self.evicted = 0
        self.refused = 0

    def admit(self, connection: GuardedH11Protocol) -> bool:
        """Registers a new connection, making room at the cap; ``False``: refuse it."""
        if len(self.connections) >= self.limits.max_connections:
            victim = self._longest_stalled()
            if victim is None:
                self.refused += 1
                return False
            self.evicted += 1
            victim.close_with(503, "the server is at its connection limit and this connection was the slowest to send")
        self.connections[connection] = None
        return True

    def forget(self, connection: GuardedH11Protocol) -> None:
        """Unregisters a closed connection."""
        self.connections.pop(connection, None)

    def _longest_stalled(self) -> GuardedH11Protocol | None:
        stalled = [item for item in self.connections if item.phase != "app" and not item.closing]
        return min(stalled, key=lambda item: item.phase_started, default=None)


class GuardedH11Protocol(H11Protocol):
    """uvicorn's HTTP/1.1 protocol with header and body deadlines and a connection cap.

    The phase is read from h11's state of the client's side after every event: ``IDLE`` is waiting for
    (or reading) a request's headers, ``SEND_BODY`` is reading its body, anything else is the app's turn.
    Use :func:`guarded_protocol` to get a class bound to a :class:`ConnectionGuard`.
    """

    guard: ClassVar[ConnectionGuard]

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.phase = "headers"
        self.phase_started = 0.0
        self.closing = False
        self._deadline: asyncio.TimerHandle | None = None

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        if not self.guard.admit(self):
            self.close_with(503, "the server is at its connection limit; retry shortly", answer_unstarted=True)
            return
        self._enter("headers")

    def connection_lost(self, exc: Exception | None) -> None:
        self._cancel_deadline()
        self.guard.forget(self)
        super().connection_lost(exc)

    def data_received(self, data: bytes) -> None:
        super().data_received(data)
        self._track()

    def on_response_complete(self) -> None:
        super().on_response_complete()
        self._track()

    def handle_websocket_upgrade(self, event: h11.Request) -> None:
        """Hands the connection to the WebSocket protocol, which has its own keep-alive; no deadlines."""
        self._cancel_deadline()
        self.closing = True
        self.guard.forget(self)
        super().handle_websocket_upgrade(event)

    def close_with(self, status: int, message: str, *, answer_unstarted: bool = False) -> None:
        """Answers ``status`` with a JSON error and closes; nothing is written once an answer started.

        A connection that has not started a request is closed without an answer (as an idle keep-alive
        connection is), unless ``answer_unstarted``.
        """
        if self.closing:
            return
        self.closing = True
        self._cancel_deadline()
        request_started = bool(self.conn.trailing_data[0]) or self.conn.their_state is not h11.IDLE
        answer_started = self.conn.our_state not in (h11.IDLE, h11.SEND_RESPONSE)
        if (request_started or answer_unstarted) and not answer_started and not self.transport.is_closing():
            self.transport.write(_raw_error(status, message))
        self.transport.close()

    def _track(self) -> None:
        if self.closing or self.transport.is_closing():
            return
        state = self.conn.their_state
        self._enter("headers" if state is h11.IDLE else "body" if state is h11.SEND_BODY else "app")

    def _enter(self, phase: str) -> None:
        if phase == self.phase and self._deadline is not None:
            return  # the deadline counts from the start of the phase, not from the last byte
        self._cancel_deadline()
        self.phase = phase
        self.phase_started = self.guard.clock()
        limits = self.guard.limits
        timeout = {"headers": limits.header_timeout_s, "body": limits.body_timeout_s}.get(phase)
        if timeout is not None:
            self._deadline = self.loop.call_later(timeout, self._expire)

    def _expire(self) -> None:
        self._deadline = None
        self.guard.timed_out += 1
        what = "headers" if self.phase == "headers" else "body"
        limit = self.guard.limits.header_timeout_s if what == "headers" else self.guard.limits.body_timeout_s
        self.close_with(408, f"the request {what} did not arrive within {limit:g} s")

    def _cancel_deadline(self) -> None:
        if self._deadline is not None:
            self._deadline.cancel()
            self._deadline = None


def _raw_error(status: int, message: str) -> bytes:
    # Written below h11: the client may not have finished a request h11 could answer.
    kind = "timeout" if status == 408 else "overloaded"
    payload = json.dumps(error_body(status, kind, message)).encode()
    reason = {408: "Request Timeout", 503: "Service Unavailable"}.get(status, "Error")
    head = (
        f"HTTP/1.1 {status} {reason}\r\ncontent-type: application/json\r\n"
        f"content-length: {len(payload)}\r\nconnection: close\r\n\r\n"
    )
    return head.encode("latin-1") + payload


def guarded_protocol(guard: ConnectionGuard) -> type[GuardedH11Protocol]:
    """A protocol class for ``uvicorn.Config(http=...)`` whose connections share ``guard``."""
    return type("BoundGuardedH11Protocol", (GuardedH11Protocol,), {"guard": guard})


class AcceptErrorLog:
    """An event-loop exception handler that logs "cannot accept" errors as one line, at most once a second.

    asyncio reports each failed ``accept`` (too many open files...) with a traceback; under a flood of
    connections that is a line per attempt. Every other error goes to the loop's default handler.
    """

    def __init__(self, interval_s: float = 1.0, clock: Callable[[], float] = time.monotonic) -> None:
        self.interval_s = interval_s
        self.clock = clock
        self.suppressed = 0
        self.logged = 0
        self._last: float | None = None

    def __call__(self, loop: asyncio.AbstractEventLoop, context: dict[str, Any]) -> None:
        if context.get("message") != _ACCEPT_ERROR:
            loop.default_exception_handler(context)
            return
        now = self.clock()
        if self._last is not None and now - self._last < self.interval_s:
            self.suppressed += 1
            return
        self._last = now
        self.logged += 1
        more = f" ({self.suppressed} more since the last report)" if self.suppressed else ""
        self.suppressed = 0
        logger.error(
            "cannot accept connections: %s%s; lower --max-connections (LYCHEE_MAX_CONNECTIONS) or raise the "
            "open-file limit (ulimit -n)",
            context.get("exception"),
            more,
        )


class GuardedServer(uvicorn.Server):
    """uvicorn serving ``app`` under ``limits``, with :class:`AcceptErrorLog` on its event loop.

    Args:
        app: The ASGI app.
        limits: The connection limits; ``max_connections`` is fitted to the open-file limit.
        options: Other ``uvicorn.Config`` arguments (host, port, log_level...).

    Attributes:
        guard: The open connections and the counts of those timed out, evicted and refused.
    """

    def __init__(self, app: Any, limits: ConnectionLimits, **options: Any) -> None:
        fitted = limits.fitted()
        if fitted.max_connections < limits.max_connections:
            logger.warning(
                "max_connections lowered from %d to %d to fit the open-file limit (ulimit -n %d)",
                limits.max_connections,
                fitted.max_connections,
                _open_file_limit() or 0,
            )
        self.guard = ConnectionGuard(fitted)
        config = uvicorn.Config(
            app,
            http=guarded_protocol(self.guard),
            timeout_keep_alive=max(1, round(fitted.keep_alive_timeout_s)),
            backlog=ACCEPT_BURST,
            **options,
        )
        super().__init__(config)

    async def startup(self, sockets: Any = None) -> None:
        """Installs the accept-error handler, then starts as uvicorn does."""
        asyncio.get_running_loop().set_exception_handler(AcceptErrorLog())
        await super().startup(sockets=sockets)
