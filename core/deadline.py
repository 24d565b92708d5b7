"""A caller's deadline, down to every socket operation of an HTTP call.

httpx timeouts are per operation: a read timeout of 2 s bounds one socket read, so a server that sends a
byte every second (headers or body) keeps a call alive for ever. The transports here give each connect,
read, write and TLS handshake only the time left before the deadline of the call in progress, so a call
ends at its deadline whatever the server does: answering slowly, trickling, or never accepting.

The deadline travels in a :class:`contextvars.ContextVar` set around each attempt (:func:`deadline_at`),
which threads and asyncio tasks keep apart; outside it the transports behave as httpx's own. Only the
socket layer is wrapped (httpcore's public network-backend interface); the connection pool is httpcore's.
The transports connect directly: ``HTTP(S)_PROXY`` variables are not used, as with any httpx client given
its own transport.

Example:
    >>> with httpx.Client(transport=deadline_transport()) as client:  # doctest: +SKIP
    ...     with deadline_at(time.monotonic() + 2):
    ...         client.get("http://slow-host/")  # raises httpx.ReadTimeout after 2 s at most
"""

from __future__ import annotations

import contextvars
import functools
import ssl
import time
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from typing import Any

import httpcore
import httpx

_DEADLINE: contextvars.ContextVar[float | None] = contextvars.ContextVar("lychee_rerank_deadline", default=None)

# A socket timeout of 0 would make the socket non-blocking (BlockingIOError instead of a timeout): past the
# deadline, operations get this instead, and fail as timeouts at once.
_SHORTEST_WAIT_S = 0.001

SocketOptions = Iterable[Any]


@contextmanager
def deadline_at(moment: float) -> Iterator[None]:
    """Socket operations of the transports below, in this context, stop at ``moment`` (``time.monotonic``)."""
    token = _DEADLINE.set(moment)
    try:
        yield
    finally:
        _DEADLINE.reset(token)


def _clamped(timeout: float | None) -> float | None:
    moment = _DEADLINE.get()
    if moment is None:
        return timeout
    left = max(moment - time.monotonic(), _SHORTEST_WAIT_S)
    return left if timeout is None else min(timeout, left)


class _Stream(httpcore.NetworkStream):
    def __init__(self, inner: httpcore.NetworkStream) -> None:
        self._inner = inner

    def read(self, max_bytes: int, timeout: float | None = None) -> bytes:
        return self._inner.read(max_bytes, _clamped(timeout))

    def write(self, buffer: bytes, timeout: float | None = None) -> None:
        self._inner.write(buffer, _clamped(timeout))

    def close(self) -> None:
        self._inner.close()

    def start_tls(
        self, ssl_context: ssl.SSLContext, server_hostname: str | None = None, timeout: float | None = None
    ) -> httpcore.NetworkStream:
        return _Stream(self._inner.start_tls(ssl_context, server_hostname, _clamped(timeout)))

    def get_extra_info(self, info: str) -> Any:
        return self._inner.get_extra_info(info)


class _Backend(httpcore.NetworkBackend):
    def __init__(self, inner: httpcore.NetworkBackend) -> None:
        self._inner = inner

    def connect_tcp(
        self,
        host: str,
        port: int,
        timeout: float | None = None,
        local_address: str | None = None,
        socket_options: SocketOptions | None = None,
    ) -> httpcore.NetworkStream:
        return _Stream(self._inner.connect_tcp(host, port, _clamped(timeout), local_address, socket_options))

    def connect_unix_socket(
        self, path: str, timeout: float | None = None, socket_options: SocketOptions | None = None
    ) -> httpcore.NetworkStream:
        return _Stream(self._inner.connect_unix_socket(path, _clamped(timeout), socket_options))

    def sleep(self, seconds: float) -> None:
        self._inner.sleep(seconds)


class _AsyncStream(httpcore.AsyncNetworkStream):
    def __init__(self, inner: httpcore.AsyncNetworkStream) -> None:
        self._inner = inner

    async def read(self, max_bytes: int, timeout: float | None = None) -> bytes:
        return await self._inner.read(max_bytes, _clamped(timeout))

    async def write(self, buffer: bytes, timeout: float | None = None) -> None:
        await self._inner.write(buffer, _clamped(timeout))

    async def aclose(self) -> None:
        await self._inner.aclose()

    async def start_tls(
        self, ssl_context: ssl.SSLContext, server_hostname: str | None = None, timeout: float | None = None
    ) -> httpcore.AsyncNetworkStream:
        return _AsyncStream(await self._inner.start_tls(ssl_context, server_hostname, _clamped(timeout)))

    def get_extra_info(self, info: str) -> Any:
        return self._inner.get_extra_info(info)


class _AsyncBackend(httpcore.AsyncNetworkBackend):
    def __init__(self, inner: httpcore.AsyncNetworkBackend) -> None:
        self._inner = inner

    async def connect_tcp(
        self,
        host: str,
        port: int,
        timeout: float | None = None,
        local_address: str | None = None,
        socket_options: SocketOptions | None = None,
    ) -> httpcore.AsyncNetworkStream:
        stream = await self._inner.connect_tcp(host, port, _clamped(timeout), local_address, socket_options)
        return _AsyncStream(stream)

    async def connect_unix_socket(
        self, path: str, timeout: float | None = None, socket_options: SocketOptions | None = None
    ) -> httpcore.AsyncNetworkStream:
        return _AsyncStream(await self._inner.connect_unix_socket(path, _clamped(timeout), socket_options))

    async def sleep(self, seconds: float) -> None:
        await self._inner.sleep(seconds)


@functools.cache
def _ssl_context() -> ssl.SSLContext:
    # Built once: loading the CA bundle takes milliseconds, and the async client is made per call.
    return httpx.create_ssl_context()


def deadline_transport() -> httpx.HTTPTransport:
    """httpx's transport, its connection pool on sockets that stop at the deadline of :func:`deadline_at`."""
    transport = httpx.HTTPTransport(verify=_ssl_context())
    limits = httpx.Limits()  # httpx's defaults, as the transport replaced here has them
    # httpx offers no public way to choose the pool's network backend; its transport keeps the pool in
    # `_pool` (httpx 0.18 to 0.28). The pool itself is built through httpcore's public API.
    transport._pool = httpcore.ConnectionPool(
        ssl_context=_ssl_context(),
        max_connections=limits.max_connections,
        max_keepalive_connections=limits.max_keepalive_connections,
        keepalive_expiry=limits.keepalive_expiry,
        network_backend=_Backend(httpcore.SyncBackend()),
    )
    return transport


def async_deadline_transport() -> httpx.AsyncHTTPTransport:
    """:func:`deadline_transport` for ``httpx.AsyncClient`` (asyncio or trio, through anyio)."""
    transport = httpx.AsyncHTTPTransport(verify=_ssl_context())
    limits = httpx.Limits()
    transport._pool = httpcore.AsyncConnectionPool(
        ssl_context=_ssl_context(),
        max_connections=limits.max_connections,
        max_keepalive_connections=limits.max_keepalive_connections,
        keepalive_expiry=limits.keepalive_expiry,
        network_backend=_AsyncBackend(httpcore.AnyIOBackend()),
    )
    return transport
