"""``RemoteReranker``: the :class:`~lychee_rerank.core.Reranker` interface over the HTTP service.

It calls ``POST /v1/rerank`` of ``lychee-rerank serve``. Images travel as something the server can read:
PIL images, bytes and local files become ``data:`` URIs (the service refuses local paths by default),
URLs and data URIs are passed through.

Deadline: ``timeout`` is the caller's wall-clock budget for the whole call. Every attempt, every wait
for a retry and every socket operation gets only what is left of it (see :mod:`lychee_rerank.core.deadline`),
so a call returns or raises within ``timeout`` whether the service answers slowly, trickles its answer,
accepts and never answers, or never accepts. Retries happen only where no answer is coming: a connection
that could not be made or was closed before the answer, and a 429 or 503 (overloaded, starting), after
``Retry-After`` when the service sends it, else after an exponential backoff. A wait that does not fit in
what is left of the budget is not started: the call raises at once, saying when the service asked to be
retried. A read timeout is never retried (the request may still be running there). The rules are in
:mod:`lychee_rerank.core.attempts`; with several base URLs, calls take turns and a failing endpoint is
skipped for a while (:mod:`lychee_rerank.core.endpoints`).

Errors: input the service refuses (its own JSON error body on 400, 413 or 422) raises
:class:`~lychee_rerank.core.InvalidInputError` (or :class:`~lychee_rerank.core.ImageError` with the
server's reason), as the local reranker would; a refused API key (401, 403) raises
:class:`RemoteAuthError`; anything else (unreachable, overloaded, a proxy's error page, an answer that is
not a valid rerank response) raises :class:`RemoteRerankerError`. Answers are checked: every index in
range and once, every score a finite number in [0, 1], one result per document unless ``top_n`` or
``min_score`` was asked.

Example:
    >>> reranker = RemoteReranker("http://gpu-box:8000", api_key="secret", timeout=2.0)  # doctest: +SKIP
    >>> reranker.score("red dress", ["a red dress", {"image": "dress.jpg"}])  # doctest: +SKIP
    [0.93, 0.71]
"""

from __future__ import annotations

import base64
import copy
import io
import json
import math
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
from PIL import Image

from lychee_rerank.core import wire
from lychee_rerank.core.answers import Answer, checked_results
from lychee_rerank.core.attempts import Connections, Plan, Policy, apost, plan, post
from lychee_rerank.core.endpoints import EndpointPool, parse_endpoints
from lychee_rerank.core.errors import ImageError, RemoteAuthError, RemoteRerankerError
from lychee_rerank.core.inputs import Document, DocumentLike, ImageInput, Query, QueryLike, as_documents, as_query
from lychee_rerank.core.interface import BaseReranker, Reranker, RerankResult, check_rerank_options
from lychee_rerank.core.sources import MAX_PATH_CHARS, source_kind

__all__ = ["RemoteAuthError", "RemoteReranker", "RemoteRerankerError", "as_reranker", "encode_image"]

_MAGIC = (
    (b"\x89PNG", "image/png"),
    (b"\xff\xd8", "image/jpeg"),
    (b"GIF8", "image/gif"),
    (b"BM", "image/bmp"),
    (b"II*\x00", "image/tiff"),
    (b"MM\x00*", "image/tiff"),
)


def _mime(data: bytes) -> str:
    if data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return "image/webp"
    return next((mime for magic, mime in _MAGIC if data.startswith(magic)), "image/png")


def _data_uri(data: bytes) -> str:
    return f"data:{_mime(data)};base64,{base64.b64encode(data).decode('ascii')}"


def encode_image(image: ImageInput) -> str:
    """An image as a string the service accepts: URLs and data URIs as given, anything local as a data URI.

    Bare text that names an existing file on this machine is sent as that file's bytes; other bare text is
    sent as it is (raw base64, or a path the service may be allowed to read under its ``--local-roots``).
    """
    if isinstance(image, Image.Image):
        buffer = io.BytesIO()
        image.save(buffer, format="PNG")  # lossless: the server decodes the same pixels
        return _data_uri(buffer.getvalue())
    if isinstance(image, (bytes, bytearray, memoryview)):
        return _data_uri(bytes(image))
    if isinstance(image, os.PathLike):
        return _data_uri(_read_file(Path(os.fspath(image))))
    text = image.strip()
    kind = source_kind(text)
    if kind == "file_uri":
        return _data_uri(_read_file(Path(text[len("file://") :])))
    if kind == "bare" and len(text) < MAX_PATH_CHARS:
        path = Path(text)
        try:
            is_file = path.is_file()
        except (OSError, ValueError):
            is_file = False
        if is_file:
            return _data_uri(_read_file(path))
    return text


def _read_file(path: Path) -> bytes:
    try:
        return path.read_bytes()
    except FileNotFoundError as error:
        raise ImageError(f"The file {str(path)!r} does not exist; check the path.", reason="not_found") from error
    except OSError as error:
        raise ImageError(f"The file {str(path)!r} cannot be read: {error}.", reason="not_found") from error


def _payload(item: Query | Document) -> dict[str, str]:
    fields: dict[str, str] = {}
    if item.text is not None:
        fields["text"] = item.text
    if item.image is not None:
        fields["image"] = encode_image(item.image)
    return fields


@dataclass(frozen=True)
class _Request:
    """One rerank request: its JSON body, encoded once and sent as is on every attempt, and what it asked."""

    content: bytes
    documents: list[Document]
    top_n: int | None = None
    min_score: float | None = None


class RemoteReranker(BaseReranker):
    """The service at ``url`` as a :class:`~lychee_rerank.core.Reranker`.

    Args:
        url: The service's base URL, e.g. ``http://gpu-box:8000``; or several (replicas without a load
            balancer, two regions) as a list or comma-separated: calls are spread across them in turn, a
            failure moves a call to the next, and an endpoint that keeps failing is rested for a while
            (:mod:`lychee_rerank.core.endpoints`). A ``user:password@`` in a URL is sent as HTTP basic auth
            (for a proxy in front of the service) and never shown in errors, logs or ``repr``.
        api_key: Sent as ``Authorization: Bearer``; default: ``$LYCHEE_API_KEY``; empty: none.
        timeout: Seconds the whole call may take, retries, moves to other endpoints and waits included.
        max_retries: Retries on 429, 503 and connection failures, and moves to another endpoint after a 5xx,
            within ``timeout``.
        backoff_s: First retry delay; doubles each time. A ``Retry-After`` from the service replaces it.
        max_backoff_s: Cap on one backoff delay (not on a ``Retry-After``, which is what the service asked).
        dead_backoff_s: How long an endpoint that failed is skipped by later calls; doubles with each failure
            in a row.
        max_dead_backoff_s: Cap on that.
        transport: An httpx transport for the sync client (tests). Without one, the client's own transport
            cuts every socket operation at the deadline. With one, each attempt gets the time left as its
            connect/read/write/pool timeouts and the body is checked between chunks, so a server trickling
            its answer can overrun ``timeout`` by one socket read at most (at most the time that was left
            when that attempt started). ``HTTP(S)_PROXY`` variables are not used either way.
        async_transport: The same for the async client.

    Raises:
        ValueError: No URL, one that is not http(s) or given twice, an API key that cannot travel in a
            header (non-ASCII, surrounding blanks, control characters), credentials in a URL beside an API
            key, or a timeout that is not a positive number.
    """

    def __init__(
        self,
        url: str | Sequence[str],
        *,
        api_key: str | None = None,
        timeout: float = 60.0,
        max_retries: int = 3,
        backoff_s: float = 0.5,
        max_backoff_s: float = 30.0,
        dead_backoff_s: float = 1.0,
        max_dead_backoff_s: float = 30.0,
        transport: httpx.BaseTransport | None = None,
        async_transport: httpx.AsyncBaseTransport | None = None,
    ) -> None:
        if isinstance(max_retries, bool) or not isinstance(max_retries, int) or max_retries < 0:
            raise ValueError(f"max_retries must be an integer >= 0, got {max_retries!r}")
        delays = {
            "backoff_s": backoff_s,
            "max_backoff_s": max_backoff_s,
            "dead_backoff_s": dead_backoff_s,
            "max_dead_backoff_s": max_dead_backoff_s,
        }
        for name, value in delays.items():
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 <= value < math.inf:
                raise ValueError(f"{name} must be a finite number >= 0, got {value!r}")
        self.timeout = _checked_timeout(timeout)
        self.max_retries = max_retries
        self.backoff_s = float(backoff_s)
        self.max_backoff_s = float(max_backoff_s)
        endpoints = parse_endpoints(url)
        self.urls = tuple(endpoint.base for endpoint in endpoints)
        self.url = ",".join(self.urls)  # what RemoteReranker(url) takes back
        key = api_key if api_key is not None else os.environ.get(wire.API_KEY_ENV)
        headers: dict[str, str] = {}
        with_credentials = [endpoint.base for endpoint in endpoints if endpoint.auth is not None]
        if key:
            wire.check_api_key(key, "api_key" if api_key is not None else wire.API_KEY_ENV)
            if with_credentials:
                raise ValueError(
                    f"{with_credentials[0]}: give either credentials in the URL or an API key (api_key= or "
                    f"{wire.API_KEY_ENV}), not both: both travel in the Authorization header"
                )
            headers["Authorization"] = f"Bearer {key}"
        self._key_sent = bool(key) or bool(with_credentials)
        self._pool = EndpointPool(endpoints, dead_backoff_s=dead_backoff_s, max_dead_backoff_s=max_dead_backoff_s)
        self._connections = Connections(headers, transport, async_transport)

    def __repr__(self) -> str:
        return f"RemoteReranker({self.url!r})"

    def with_timeout(self, seconds: float) -> RemoteReranker:
        """This reranker with another ``timeout``, sharing its connections and endpoints' health.

        What adapters' ``timeout_s`` uses.

        Example:
            >>> reranker.with_timeout(0.5).rerank("q", ["a", "b"])  # doctest: +SKIP
        """
        view = copy.copy(self)
        view.timeout = _checked_timeout(seconds)
        return view

    def close(self) -> None:
        """Closes the sync HTTP client, shared with the :meth:`with_timeout` views."""
        self._connections.close()

    async def aclose(self) -> None:
        """Closes the async HTTP client of the running event loop (shared with the :meth:`with_timeout` views).

        Async calls on one event loop share one client and its kept-alive connections; a loop that ends
        drops its client. Call this before a long-lived loop stops using the reranker.
        """
        await self._connections.aclose()

    # -- one call: the request, the plan its attempts follow, the checked answer -----------------

    def _request(
        self,
        query: QueryLike,
        documents: Sequence[DocumentLike],
        instruction: str | None,
        top_n: int | None = None,
        min_score: float | None = None,
    ) -> _Request:
        parsed = as_documents(documents)
        body: dict[str, Any] = {"query": _payload(as_query(query)), "documents": [_payload(d) for d in parsed]}
        for name, value in (("instruction", instruction), ("top_n", top_n), ("min_score", min_score)):
            if value is not None:
                body[name] = value
        return _Request(json.dumps(body).encode("utf-8"), parsed, top_n, min_score)

    def _steps(self) -> Plan:
        policy = Policy(self.timeout, self.max_retries, self.backoff_s, self.max_backoff_s)
        return plan(policy, self._pool)

    def _results(self, request: _Request, answer: Answer) -> list[tuple[int, float]]:
        return checked_results(
            answer,
            documents=len(request.documents),
            top_n=request.top_n,
            min_score=request.min_score,
            where=self.url,
            key_sent=self._key_sent,
        )

    def _in_order(self, request: _Request, answer: Answer) -> list[float]:
        scores = [0.0] * len(request.documents)
        for index, value in self._results(request, answer):
            scores[index] = value
        return scores

    def _ranked(self, request: _Request, answer: Answer) -> list[RerankResult]:
        return [RerankResult(i, s, request.documents[i]) for i, s in self._results(request, answer)]

    # -- the Reranker interface ------------------------------------------------------------------

    def score(
        self, query: QueryLike, documents: Sequence[DocumentLike], *, instruction: str | None = None
    ) -> list[float]:
        """Scores on the service; input order, each in [0, 1].

        Raises:
            InvalidInputError: The service refused the input (ImageError for images, with its reason).
            RemoteAuthError: The service refused the API key.
            RemoteRerankerError: The service is unreachable, failing, still overloaded, did not answer within
                ``timeout``, or sent an answer that is not a valid rerank response.
        """
        request = self._request(query, documents, instruction)
        if not request.documents:
            return []
        return self._in_order(request, post(self._steps(), self._connections, request.content))

    def rerank(
        self,
        query: QueryLike,
        documents: Sequence[DocumentLike],
        *,
        top_n: int | None = None,
        instruction: str | None = None,
        min_score: float | None = None,
    ) -> list[RerankResult]:
        """Sorted on the service, which also applies ``top_n`` and ``min_score``; raises as :meth:`score`."""
        check_rerank_options(top_n, min_score)
        request = self._request(query, documents, instruction, top_n, min_score)
        if not request.documents:
            return []
        return self._ranked(request, post(self._steps(), self._connections, request.content))

    async def ascore(
        self, query: QueryLike, documents: Sequence[DocumentLike], *, instruction: str | None = None
    ) -> list[float]:
        """``score`` with an async HTTP client: no thread, the event loop keeps running."""
        request = self._request(query, documents, instruction)
        if not request.documents:
            return []
        return self._in_order(request, await apost(self._steps(), self._connections, request.content))

    async def arerank(
        self,
        query: QueryLike,
        documents: Sequence[DocumentLike],
        *,
        top_n: int | None = None,
        instruction: str | None = None,
        min_score: float | None = None,
    ) -> list[RerankResult]:
        """``rerank`` with an async HTTP client."""
        check_rerank_options(top_n, min_score)
        request = self._request(query, documents, instruction, top_n, min_score)
        if not request.documents:
            return []
        return self._ranked(request, await apost(self._steps(), self._connections, request.content))


def _checked_timeout(timeout: object) -> float:
    if isinstance(timeout, bool) or not isinstance(timeout, (int, float)) or not 0 < timeout < math.inf:
        raise ValueError(f"timeout must be a positive number of seconds, got {timeout!r}")
    return float(timeout)


def as_reranker(reranker: Reranker | str) -> Reranker:
    """The reranker adapters use: a :class:`Reranker` as is; a URL string means the service at that URL.

    Example:
        >>> as_reranker("http://gpu-box:8000")  # doctest: +SKIP
        RemoteReranker('http://gpu-box:8000')
    """
    if isinstance(reranker, str):
        return RemoteReranker(reranker)
    if not isinstance(reranker, Reranker):
        raise TypeError(
            f"expected a Reranker (LocalReranker, RemoteReranker) or a service URL, got {type(reranker).__name__}"
        )
    return reranker
