"""Prometheus metrics of one app: requests by route and status, latency, batch sizes, queue depth.

Each app has its own registry, so several apps in one process (tests) do not collide.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"

ASGIApp = Callable[[dict[str, Any], Callable[..., Any], Callable[..., Any]], Any]


class ServiceMetrics:
    """The service's Prometheus metrics.

    Args:
        queue_depth: Called at scrape time for the number of waiting requests.
    """

    def __init__(self, queue_depth: Callable[[], int]) -> None:
        self.registry = CollectorRegistry()
        self.requests = Counter(
            "lychee_requests", "HTTP requests by route and status", ["route", "status"], registry=self.registry
        )
        self.latency = Histogram(
            "lychee_request_duration_seconds",
            "Time from request to response, by route",
            ["route"],
            buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120),
            registry=self.registry,
        )
        self.batch_documents = Histogram(
            "lychee_batch_documents",
            "Documents per engine call (after merging requests)",
            buckets=(1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024),
            registry=self.registry,
        )
        self.documents_scored = Counter(
            "lychee_documents_scored", "Documents scored by the model", registry=self.registry
        )
        self.dropped = Counter(
            "lychee_requests_dropped",
            "Requests dropped before scoring (client gone or timeout)",
            registry=self.registry,
        )
        self.queue_depth = Gauge("lychee_queue_depth", "Requests waiting for the model", registry=self.registry)
        self.queue_depth.set_function(lambda: float(queue_depth()))

    def observe_round(self, documents: int) -> None:
        """Records one engine call of ``documents`` documents."""
        self.batch_documents.observe(documents)
        self.documents_scored.inc(documents)

    def render(self) -> bytes:
        """The text exposition format."""
        return generate_latest(self.registry)


class MetricsMiddleware:
    """Pure ASGI middleware counting requests by route and status and timing them.

    Only known routes are labelled by path; anything else is ``other``, so a scanner cannot blow up the
    number of series.
    """

    def __init__(self, app: ASGIApp, metrics: ServiceMetrics, routes: Iterable[str]) -> None:
        self.app = app
        self.metrics = metrics
        self.routes = frozenset(routes)

    async def __call__(self, scope: dict[str, Any], receive: Callable[..., Any], send: Callable[..., Any]) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        path = scope.get("path", "")
        route = path if path in self.routes else "other"
        status = {"code": 500}
        started = time.perf_counter()

        async def send_and_record(message: dict[str, Any]) -> None:
            if message["type"] == "http.response.start":
                status["code"] = int(message["status"])
            await send(message)

        try:
            await self.app(scope, receive, send_and_record)
        finally:
            self.metrics.requests.labels(route, str(status["code"])).inc()
            self.metrics.latency.labels(route).observe(time.perf_counter() - started)
