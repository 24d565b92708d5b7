"""Misbehaving HTTP servers on 127.0.0.1, made of plain sockets, for testing a client's deadlines.

:class:`LoopbackServer` answers each request as its ``answer`` function says: at once, one byte at a
time (a trickle), or never. :func:`never_accepting` is a listening socket whose accept queue is full,
so a connect hangs as it does on a host that drops packets. Everything runs in one thread (so the tests
can count the client's threads), stops when its ``with`` block ends, and on its own after ``lifetime_s``.

Example:
    >>> with LoopbackServer(lambda number, body: None) as server:  # doctest: +SKIP
    ...     RemoteReranker(server.url, timeout=2).score("q", ["a"])  # raises after 2 s: no answer
"""

from __future__ import annotations

import contextlib
import json
import selectors
import socket
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from types import TracebackType
from typing import Any

_REASONS = {200: "OK", 401: "Unauthorized", 413: "Payload Too Large", 429: "Too Many Requests", 502: "Bad Gateway"}


@dataclass(frozen=True)
class Reply:
    """One HTTP answer.

    Attributes:
        status: The status code.
        body: The body bytes.
        headers: Extra headers (``Content-Length`` and ``Connection: close`` are added).
        trickle_s: Send the answer one byte every ``trickle_s`` seconds.
        trickle_headers: Trickle the headers too; ``False`` sends them at once and trickles the body.
        declared_length: A ``Content-Length`` larger than the body, so the client waits for more.
        hang_up: Close the connection without answering (a service killed mid-request).
    """

    status: int = 200
    body: bytes = b""
    headers: dict[str, str] = field(default_factory=dict)
    trickle_s: float | None = None
    trickle_headers: bool = True
    declared_length: int | None = None
    hang_up: bool = False

    @classmethod
    def json(cls, status: int, value: Any, **headers: str) -> Reply:
        """A JSON answer; keyword arguments are headers (``Retry_After="1"`` → ``Retry-After: 1``)."""
        named = {name.replace("_", "-"): text for name, text in headers.items()}
        return cls(status, json.dumps(value).encode(), {"Content-Type": "application/json", **named})

    def head(self) -> bytes:
        """The status line and headers, as bytes on the wire."""
        reason = _REASONS.get(self.status, "Status")
        length = len(self.body) if self.declared_length is None else self.declared_length
        lines = [f"HTTP/1.1 {self.status} {reason}", f"Content-Length: {length}", "Connection: close"]
        lines += [f"{name}: {value}" for name, value in self.headers.items()]
        return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")


Answer = Callable[[int, bytes], "Reply | None"]
"""Given the request's number (from 1) and its body, the reply; ``None`` never answers."""


@dataclass
class _Connection:
    sock: socket.socket
    received: bytes = b""
    at_once: bytes = b""
    pending: bytes = b""
    trickle_s: float | None = None
    next_send: float = 0.0
    answered: bool = False


class LoopbackServer:
    """An HTTP/1.1 server on 127.0.0.1 (``port`` 0: a free one) answering each request with ``answer(number, body)``.

    Attributes:
        url: ``http://127.0.0.1:PORT`` once started.
        bodies: The body of every complete request received, in order.
        heads: The request line and headers of each, in order.
    """

    def __init__(self, answer: Answer, *, port: int = 0, lifetime_s: float = 60.0) -> None:
        self.answer = answer
        self.lifetime_s = lifetime_s
        self.bodies: list[bytes] = []
        self.heads: list[bytes] = []
        self._listener = socket.create_server(("127.0.0.1", port))
        self._listener.setblocking(False)
        self.url = f"http://127.0.0.1:{self._listener.getsockname()[1]}"
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._serve, name="lychee-loopback-server", daemon=True)

    @property
    def requests(self) -> int:
        """How many complete requests arrived."""
        return len(self.bodies)

    def __enter__(self) -> LoopbackServer:
        self._thread.start()
        return self

    def __exit__(
        self, kind: type[BaseException] | None, error: BaseException | None, traceback: TracebackType | None
    ) -> None:
        self._stop.set()
        self._thread.join(timeout=5)

    def _serve(self) -> None:
        selector = selectors.DefaultSelector()
        selector.register(self._listener, selectors.EVENT_READ)
        connections: dict[socket.socket, _Connection] = {}
        ends = time.monotonic() + self.lifetime_s
        try:
            while not self._stop.is_set() and time.monotonic() < ends:
                for key, _ in selector.select(timeout=0.01):
                    if key.fileobj is self._listener:
                        with contextlib.suppress(BlockingIOError):
                            sock, _ = self._listener.accept()
                            sock.setblocking(False)
                            connections[sock] = _Connection(sock)
                            selector.register(sock, selectors.EVENT_READ)
                    else:
                        self._receive(connections[key.fileobj], selector, connections)  # type: ignore[index]
                for connection in list(connections.values()):
                    self._send(connection, selector, connections)
        finally:
            for connection in connections.values():
                connection.sock.close()
            selector.close()
            self._listener.close()

    def _receive(
        self, connection: _Connection, selector: selectors.BaseSelector, connections: dict[socket.socket, _Connection]
    ) -> None:
        try:
            data = connection.sock.recv(65536)
        except OSError:
            data = b""
        if not data:
            self._drop(connection, selector, connections)
            return
        connection.received += data
        head, separator, rest = connection.received.partition(b"\r\n\r\n")
        if connection.answered or not separator:
            return
        length = 0
        for line in head.split(b"\r\n")[1:]:
            name, _, value = line.partition(b":")
            if name.strip().lower() == b"content-length":
                length = int(value.strip())
        if len(rest) < length:
            return
        connection.answered = True
        self.heads.append(head)
        self.bodies.append(rest[:length])
        reply = self.answer(len(self.bodies), rest[:length])
        if reply is None:
            return
        if reply.hang_up:
            self._drop(connection, selector, connections)
        elif reply.trickle_s is None:
            connection.at_once = reply.head() + reply.body
        elif reply.trickle_headers:
            connection.pending, connection.trickle_s = reply.head() + reply.body, reply.trickle_s
        else:
            connection.at_once, connection.pending = reply.head(), reply.body
            connection.trickle_s = reply.trickle_s

    def _send(
        self, connection: _Connection, selector: selectors.BaseSelector, connections: dict[socket.socket, _Connection]
    ) -> None:
        try:
            if connection.at_once:
                connection.at_once = connection.at_once[connection.sock.send(connection.at_once) :]
                if not connection.at_once and connection.trickle_s is None:
                    self._drop(connection, selector, connections)  # answered: Connection: close
            elif connection.pending and time.monotonic() >= connection.next_send:
                connection.pending = connection.pending[connection.sock.send(connection.pending[:1]) :]
                connection.next_send = time.monotonic() + (connection.trickle_s or 0.0)
        except BlockingIOError:
            return
        except OSError:
            self._drop(connection, selector, connections)

    @staticmethod
    def _drop(
        connection: _Connection, selector: selectors.BaseSelector, connections: dict[socket.socket, _Connection]
    ) -> None:
        selector.unregister(connection.sock)
        connection.sock.close()
        connections.pop(connection.sock, None)


@contextlib.contextmanager
def never_accepting() -> Iterator[str]:
    """The URL of a listening socket that never accepts and whose accept queue is full: a connect hangs.

    Linux queues ``backlog + 1`` handshakes for a listener that does not accept, then drops further ones
    (unless ``tcp_abort_on_overflow`` is set), so one queued connection makes every next connect wait.
    """
    listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    filler = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    try:
        listener.bind(("127.0.0.1", 0))
        listener.listen(0)
        filler.settimeout(1.0)
        filler.connect(listener.getsockname())
        yield f"http://127.0.0.1:{listener.getsockname()[1]}"
    finally:
        filler.close()
        listener.close()
