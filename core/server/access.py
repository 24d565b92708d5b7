"""Who may call what: the API key, checked before any body is read, and a throttle on the UI's login.

With an API key configured, every route needs ``Authorization: Bearer <key>`` except:

* ``/health`` (load balancers and orchestrators probe it);
* ``/metrics``, ``/docs`` (and its assets) and ``/openapi.json``, unless ``protect_docs`` is set;
* ``/ui``, which has its own login form (a browser cannot send a Bearer header); its password is the key.

The key is checked from the request's headers, before the app reads a byte of the body: a caller without
the key cannot make the service parse (or even receive) a large body. A refused request that announced a
body is answered with ``Connection: close`` so the rest of its body is never read.

The UI's login is throttled per client address: after :attr:`LoginThrottle.free_failures` wrong keys,
each further wrong key locks the client out for twice as long as the last (1 s, 2 s, 4 s... up to
5 minutes); while locked out, every attempt is answered 429 with ``Retry-After``, without checking it.
"""

from __future__ import annotations

import secrets
import time
from collections import OrderedDict
from collections.abc import Callable
from typing import Any

from lychee_rerank.core import wire
from lychee_rerank.core.server.errors import send_error

ASGIApp = Callable[[dict[str, Any], Callable[..., Any], Callable[..., Any]], Any]

DOCS_ROUTE = "/docs"
OPENAPI_ROUTE = "/openapi.json"


def needs_key(path: str, *, protect_docs: bool) -> bool:
    """Whether a request to ``path`` needs the API key (when the service has one).

    Example:
        >>> needs_key("/v1/rerank", protect_docs=False), needs_key("/docs", protect_docs=False)
        (True, False)
    """
    if path == wire.HEALTH_ROUTE or path == wire.UI_ROUTE or path.startswith(wire.UI_ROUTE + "/"):
        return False
    documentation = path in (wire.METRICS_ROUTE, OPENAPI_ROUTE, DOCS_ROUTE) or path.startswith(DOCS_ROUTE + "/")
    return protect_docs or not documentation


def _announces_body(headers: dict[bytes, bytes]) -> bool:
    length = headers.get(b"content-length", b"0").strip()
    return b"transfer-encoding" in headers or not length.isdigit() or int(length) > 0


class ApiKeyMiddleware:
    """Answers 401 to a request without the right Bearer key, before the app (or a body read) runs.

    Args:
        app: The ASGI app behind it.
        api_key: The key; ``None`` or empty lets everything through.
        protect_docs: Also require the key on ``/metrics``, ``/docs`` and ``/openapi.json``.
    """

    def __init__(self, app: ASGIApp, api_key: str | None, *, protect_docs: bool = False) -> None:
        self.app = app
        self.expected = api_key.encode() if api_key else None
        self.protect_docs = protect_docs

    async def __call__(self, scope: dict[str, Any], receive: Callable[..., Any], send: Callable[..., Any]) -> None:
        if (
            self.expected is None
            or scope["type"] != "http"
            or scope.get("method") == "OPTIONS"  # CORS preflights never carry credentials
            or not needs_key(scope["path"], protect_docs=self.protect_docs)
        ):
            await self.app(scope, receive, send)
            return
        headers = dict(scope.get("headers") or [])
        scheme, _, given = headers.get(b"authorization", b"").partition(b" ")
        # compare_digest on bytes: constant time whatever the key's length or content.
        if scheme.lower() == b"bearer" and secrets.compare_digest(given.strip(), self.expected):
            await self.app(scope, receive, send)
            return
        extra = [(b"www-authenticate", b'Bearer realm="lychee-rerank"')]
        if _announces_body(headers):
            extra.append((b"connection", b"close"))  # the body is never read: end the connection
        await send_error(
            send, 401, "unauthorized", "a valid API key is required: send 'Authorization: Bearer <key>'", extra
        )


class LoginThrottle:
    """Per-client lockouts after repeated wrong logins, doubling each time.

    Args:
        free_failures: Wrong logins a client may make before any lockout.
        base_delay_s: The first lockout; each further failure doubles it.
        max_delay_s: The longest lockout.
        max_clients: Clients remembered at once (the least recently seen are forgotten first).
        clock: Seconds, monotonic; a seam for tests.

    Example:
        >>> throttle = LoginThrottle(free_failures=2, clock=lambda: 0.0)
        >>> [throttle.failed("10.0.0.1") for _ in range(5)]
        [0.0, 0.0, 1.0, 2.0, 4.0]
    """

    def __init__(
        self,
        free_failures: int = 5,
        base_delay_s: float = 1.0,
        max_delay_s: float = 300.0,
        max_clients: int = 10_000,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.free_failures = free_failures
        self.base_delay_s = base_delay_s
        self.max_delay_s = max_delay_s
        self.max_clients = max_clients
        self.clock = clock
        self.refused = 0
        self._clients: OrderedDict[str, tuple[int, float]] = OrderedDict()  # failures, locked until

    def delay_after(self, failures: int) -> float:
        """The lockout that follows the ``failures``-th wrong login in a row."""
        over = failures - self.free_failures
        return 0.0 if over <= 0 else min(self.base_delay_s * 2 ** (over - 1), self.max_delay_s)

    def retry_after(self, client: str) -> float:
        """Seconds until ``client`` may try again; 0 when it may now."""
        _, until = self._clients.get(client, (0, 0.0))
        return max(until - self.clock(), 0.0)

    def failed(self, client: str) -> float:
        """Records a wrong login; returns the lockout it earns."""
        failures = self._clients.pop(client, (0, 0.0))[0] + 1
        delay = self.delay_after(failures)
        self._clients[client] = (failures, self.clock() + delay)
        while len(self._clients) > self.max_clients:
            self._clients.popitem(last=False)
        return delay

    def succeeded(self, client: str) -> None:
        """Forgets ``client``'s failures."""
        self._clients.pop(client, None)


class LoginThrottleMiddleware:
    """Applies a :class:`LoginThrottle` to ``POST <ui>/login``: 429 while locked out, failures counted.

    A login is judged by the UI's answer: 200 is a success, 400 or 401 a wrong key.
    """

    def __init__(self, app: ASGIApp, throttle: LoginThrottle, login_path: str) -> None:
        self.app = app
        self.throttle = throttle
        self.login_paths = {login_path, login_path + "/"}

    async def __call__(self, scope: dict[str, Any], receive: Callable[..., Any], send: Callable[..., Any]) -> None:
        if scope["type"] != "http" or scope.get("method") != "POST" or scope["path"] not in self.login_paths:
            await self.app(scope, receive, send)
            return
        client = (scope.get("client") or ("unknown", 0))[0]
        wait = self.throttle.retry_after(client)
        if wait > 0:
            self.throttle.refused += 1
            seconds = str(max(int(wait + 0.999), 1))
            await send_error(
                send,
                429,
                "too_many_logins",
                f"too many wrong keys from this address; try again in {seconds} s",
                [(b"retry-after", seconds.encode()), (b"connection", b"close")],
            )
            return

        async def judged(message: dict[str, Any]) -> None:
            if message["type"] == "http.response.start":
                if message["status"] in (400, 401):
                    self.throttle.failed(client)
                elif message["status"] == 200:
                    self.throttle.succeeded(client)
            await send(message)

        await self.app(scope, receive, judged)
