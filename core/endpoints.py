"""The service's endpoints as the client sees them: several base URLs, spread in turn, the failing ones rested.

Replicas without a load balancer, or two regions, are given to ``RemoteReranker`` as a list of base URLs
(or one string, comma-separated). Each call starts on the next endpoint in turn (round robin). One that
fails (no connection, dropped connection, timeout, 5xx, 429, 503) is marked dead and skipped for a
while, as the Elasticsearch and OpenSearch clients treat their node lists: the first failure rests it
``dead_backoff_s``, each further one in a row twice as long, up to ``max_dead_backoff_s`` (and never less
than a ``Retry-After`` it sent). Once the rest is over it is tried again; an answer that is not a failure
makes it alive and forgets its failures. When every endpoint is resting, the one whose rest ends first is
tried anyway: a call never fails only because all endpoints failed before.

Example:
    >>> pool = EndpointPool(parse_endpoints("http://gpu-a:8000, http://gpu-b:8000"))
    >>> [endpoint.base for endpoint in pool.order()]
    ['http://gpu-a:8000', 'http://gpu-b:8000']
    >>> [endpoint.base for endpoint in pool.order()]
    ['http://gpu-b:8000', 'http://gpu-a:8000']
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import httpx

from lychee_rerank.core import wire
from lychee_rerank.core.sources import redact_url


@dataclass(frozen=True)
class Endpoint:
    """One base URL of the service.

    Attributes:
        base: The base URL without credentials or trailing ``/``: what messages, logs and ``repr`` show.
        url: The rerank route under it.
        auth: The ``user:password@`` of the URL as HTTP basic auth, if it had one.
    """

    base: str
    url: str
    auth: httpx.Auth | None = field(default=None, compare=False, repr=False)


def parse_endpoints(urls: str | Sequence[str]) -> tuple[Endpoint, ...]:
    """Endpoints from one base URL, several separated by commas, or a list of them.

    Raises:
        ValueError: No URL, one that is not http(s), or the same URL twice.

    Example:
        >>> parse_endpoints("http://admin:secret@gpu-a:8000/")
        (Endpoint(base='http://gpu-a:8000', url='http://gpu-a:8000/v1/rerank'),)
    """
    if isinstance(urls, str):
        texts = urls.split(",")
    elif isinstance(urls, Sequence) and all(isinstance(url, str) for url in urls):
        texts = list(urls)
    else:
        raise ValueError(f"the service URL must be a string or a list of strings, got {type(urls).__name__}")
    endpoints = [_endpoint(text) for text in texts if text.strip()]
    if not endpoints:
        raise ValueError("give the service's base URL, e.g. http://gpu-box:8000 (several: comma-separated)")
    bases = [endpoint.base for endpoint in endpoints]
    repeated = sorted({base for base in bases if bases.count(base) > 1})
    if repeated:
        raise ValueError(f"the service URL {repeated[0]!r} is given twice; give each endpoint once")
    return tuple(endpoints)


def _endpoint(url: str) -> Endpoint:
    text = url.strip()
    if not text.lower().startswith(("http://", "https://")):
        raise ValueError(f"the service URL must start with http:// or https://, got {redact_url(text)!r}")
    parsed = httpx.URL(text)
    base = redact_url(text, limit=len(text)).rstrip("/")
    auth = httpx.BasicAuth(parsed.username, parsed.password) if parsed.username or parsed.password else None
    return Endpoint(base, wire.rerank_endpoint_url(base), auth)


@dataclass
class _Health:
    failures: int = 0
    dead_until: float = 0.0


class EndpointPool:
    """The endpoints of one reranker (and its ``with_timeout`` views), in turn, failing ones rested.

    Safe to share between threads and event loops: the state changes under a lock.

    Args:
        endpoints: The endpoints, in the order given.
        dead_backoff_s: Rest after a first failure; doubles with each failure in a row.
        max_dead_backoff_s: Cap on one rest.
        clock: Seconds, monotonic (tests pass their own).
    """

    def __init__(
        self,
        endpoints: Sequence[Endpoint],
        *,
        dead_backoff_s: float = 1.0,
        max_dead_backoff_s: float = 30.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if not endpoints:
            raise ValueError("an endpoint pool needs at least one endpoint")
        self.endpoints = tuple(endpoints)
        self.dead_backoff_s = dead_backoff_s
        self.max_dead_backoff_s = max_dead_backoff_s
        self._clock = clock
        self._health = {endpoint: _Health() for endpoint in self.endpoints}
        self._turn = 0
        self._lock = threading.Lock()

    def order(self) -> list[Endpoint]:
        """The endpoints to try for one call: the live ones starting at the next in turn, then the resting ones
        by the end of their rest."""
        with self._lock:
            now = self._clock()
            alive = [endpoint for endpoint in self.endpoints if self._health[endpoint].dead_until <= now]
            resting = sorted(
                (endpoint for endpoint in self.endpoints if self._health[endpoint].dead_until > now),
                key=lambda endpoint: self._health[endpoint].dead_until,
            )
            if alive:
                start = self._turn % len(alive)
                alive = alive[start:] + alive[:start]
                self._turn += 1
            return alive + resting

    def failed(self, endpoint: Endpoint, *, at_least_s: float | None = None) -> float:
        """Marks ``endpoint`` dead for its next rest (at least ``at_least_s``); returns the rest in seconds."""
        with self._lock:
            health = self._health[endpoint]
            health.failures += 1
            rest: float = min(self.dead_backoff_s * 2 ** (health.failures - 1), self.max_dead_backoff_s)
            if at_least_s is not None:
                rest = max(rest, at_least_s)
            health.dead_until = self._clock() + rest
            return rest

    def succeeded(self, endpoint: Endpoint) -> None:
        """Marks ``endpoint`` alive and forgets its failures."""
        with self._lock:
            self._health[endpoint] = _Health()

    def resting(self) -> list[Endpoint]:
        """The endpoints skipped for now, soonest back first."""
        with self._lock:
            now = self._clock()
            dead = [endpoint for endpoint in self.endpoints if self._health[endpoint].dead_until > now]
            return sorted(dead, key=lambda endpoint: self._health[endpoint].dead_until)
