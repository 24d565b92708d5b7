"""``RemoteReranker``: the :class:`~lychee_rerank.core.Reranker` interface over the HTTP service.

It calls ``POST /v1/rerank`` of ``lychee-rerank serve``. Images travel as something the server can read:
PIL images, bytes and local files become ``data:`` URIs (the service refuses local paths by default),
URLs and data URIs are passed through. Requests answered 429 or 503, and connection failures, are retried
with exponential backoff, honouring ``Retry-After``. Input errors (4xx) raise
:class:`~lychee_rerank.core.InvalidInputError` (or :class:`~lychee_rerank.core.ImageError` with the
server's reason), as the local reranker would; anything else raises :class:`RemoteRerankerError`.

Example:
    >>> reranker = RemoteReranker("http://gpu-box:8000", api_key="secret")  # doctest: +SKIP
    >>> reranker.score("red dress", ["a red dress", {"image": "dress.jpg"}])  # doctest: +SKIP
    [0.93, 0.71]
"""

from __future__ import annotations

import asyncio
import base64
import io
import os
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, cast, get_args

import httpx
from PIL import Image

from lychee_rerank.core import wire
from lychee_rerank.core.errors import ImageError, ImageErrorReason, InvalidInputError, LycheeError
from lychee_rerank.core.inputs import Document, DocumentLike, ImageInput, Query, QueryLike, as_documents, as_query
from lychee_rerank.core.interface import BaseReranker, Reranker, RerankResult, check_rerank_options
from lychee_rerank.core.sources import MAX_PATH_CHARS, source_kind

_RETRY_STATUSES = frozenset({429, 503})
_REASONS = frozenset(get_args(ImageErrorReason))
_MAGIC = (
    (b"\x89PNG", "image/png"),
    (b"\xff\xd8", "image/jpeg"),
    (b"GIF8", "image/gif"),
    (b"BM", "image/bmp"),
    (b"II*\x00", "image/tiff"),
    (b"MM\x00*", "image/tiff"),
)


class RemoteRerankerError(LycheeError):
    """The service could not be reached or failed (transport error, 5xx, auth, still overloaded).

    Attributes:
        status: The HTTP status, or ``None`` when no answer came.
    """

    def __init__(self, message: str, *, status: int | None = None) -> None:
        super().__init__(message)
        self.status = status


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


def _error_from(response: httpx.Response) -> LycheeError:
    try:
        body = response.json()
        detail = body.get("error", {}) if isinstance(body, dict) else {}
        message = str(detail.get("message") or body.get("message") or response.text)
        reason = detail.get("reason")
    except ValueError:
        message, reason = response.text[:500], None
    status = response.status_code
    if status in (400, 413, 422):
        if reason in _REASONS:
            return ImageError(message, reason=cast(ImageErrorReason, reason))
        return InvalidInputError(message)
    return RemoteRerankerError(f"the reranking service answered HTTP {status}: {message}", status=status)


class RemoteReranker(BaseReranker):
    """The service at ``url`` as a :class:`~lychee_rerank.core.Reranker`.

    Args:
        url: The service's base URL, e.g. ``http://gpu-box:8000``.
        api_key: Sent as ``Authorization: Bearer``; default: ``$LYCHEE_API_KEY``.
        timeout: Seconds allowed per HTTP attempt.
        max_retries: Retries on 429, 503 and connection failures.
        backoff_s: First retry delay; doubles each time (``Retry-After`` wins when the server sends it).
        max_backoff_s: Cap on one delay.
        transport: An httpx transport for the sync client (tests); the async client uses ``async_transport``.
        async_transport: An httpx async transport.
    """

    def __init__(
        self,
        url: str,
        *,
        api_key: str | None = None,
        timeout: float = 60.0,
        max_retries: int = 3,
        backoff_s: float = 0.5,
        max_backoff_s: float = 30.0,
        transport: httpx.BaseTransport | None = None,
        async_transport: httpx.AsyncBaseTransport | None = None,
    ) -> None:
        if max_retries < 0:
            raise ValueError(f"max_retries must be 0 or more, got {max_retries}")
        self.url = url.rstrip("/")
        key = api_key if api_key is not None else os.environ.get(wire.API_KEY_ENV)
        self._headers = {"Authorization": f"Bearer {key}"} if key else {}
        self.timeout = timeout
        self.max_retries = max_retries
        self.backoff_s = backoff_s
        self.max_backoff_s = max_backoff_s
        self._transport = transport
        self._async_transport = async_transport
        self._client: httpx.Client | None = None

    def __repr__(self) -> str:
        return f"RemoteReranker({self.url!r})"

    # -- the shared work: request body, retry decision, response parsing -------------------------

    def _body(
        self,
        query: QueryLike,
        documents: Sequence[DocumentLike],
        instruction: str | None,
        top_n: int | None = None,
        min_score: float | None = None,
    ) -> tuple[dict[str, Any], list[Document]]:
        parsed = as_documents(documents)
        body: dict[str, Any] = {
            "query": _payload(as_query(query)),
            "documents": [_payload(document) for document in parsed],
        }
        for name, value in (("instruction", instruction), ("top_n", top_n), ("min_score", min_score)):
            if value is not None:
                body[name] = value
        return body, parsed

    def _delay(self, attempt: int, response: httpx.Response | None) -> float | None:
        """Seconds to wait before retrying, or ``None`` when this outcome is final."""
        if attempt >= self.max_retries:
            return None
        if response is not None and response.status_code not in _RETRY_STATUSES:
            return None
        delay: float = self.backoff_s * 2**attempt
        retry_after = str(response.headers.get("retry-after", "")) if response is not None else ""
        if retry_after.strip().isdigit():
            delay = float(retry_after)
        return min(delay, self.max_backoff_s)

    @staticmethod
    def _results(response: httpx.Response) -> list[tuple[int, float]]:
        if not response.is_success:
            raise _error_from(response)
        try:
            return [(int(item["index"]), float(item["relevance_score"])) for item in response.json()["results"]]
        except (ValueError, KeyError, TypeError) as error:
            raise RemoteRerankerError(f"the service's answer is not a rerank response: {error}") from error

    @staticmethod
    def _in_order(pairs: list[tuple[int, float]], count: int) -> list[float]:
        scores = [float("nan")] * count
        for index, value in pairs:
            scores[index] = value
        return scores

    # -- sync -----------------------------------------------------------------------------------

    def _post(self, body: Mapping[str, Any]) -> httpx.Response:
        if self._client is None:
            self._client = httpx.Client(timeout=self.timeout, headers=self._headers, transport=self._transport)
        attempt = 0
        while True:
            try:
                response = self._client.post(f"{self.url}{wire.RERANK_ROUTE}", json=body)
            except httpx.TransportError as error:
                delay = self._delay(attempt, None)
                if delay is None:
                    raise RemoteRerankerError(f"the reranking service at {self.url} is unreachable: {error}") from error
            else:
                delay = self._delay(attempt, response)
                if delay is None:
                    return response
            time.sleep(delay)
            attempt += 1

    def score(
        self, query: QueryLike, documents: Sequence[DocumentLike], *, instruction: str | None = None
    ) -> list[float]:
        """Scores on the service; input order, each in [0, 1].

        Raises:
            InvalidInputError: The service refused the input (ImageError for images, with its reason).
            RemoteRerankerError: The service is unreachable, failing or still overloaded after retries.
        """
        body, parsed = self._body(query, documents, instruction)
        if not parsed:
            return []
        return self._in_order(self._results(self._post(body)), len(parsed))

    def rerank(
        self,
        query: QueryLike,
        documents: Sequence[DocumentLike],
        *,
        top_n: int | None = None,
        instruction: str | None = None,
        min_score: float | None = None,
    ) -> list[RerankResult]:
        """Sorted on the service, which also applies ``top_n`` and ``min_score``."""
        check_rerank_options(top_n, min_score)
        body, parsed = self._body(query, documents, instruction, top_n, min_score)
        if not parsed:
            return []
        return [RerankResult(index, value, parsed[index]) for index, value in self._results(self._post(body))]

    # -- async ----------------------------------------------------------------------------------

    async def _apost(self, body: Mapping[str, Any]) -> httpx.Response:
        # A client per call: an AsyncClient is bound to the event loop it first ran on.
        async with httpx.AsyncClient(
            timeout=self.timeout, headers=self._headers, transport=self._async_transport
        ) as client:
            attempt = 0
            while True:
                try:
                    response = await client.post(f"{self.url}{wire.RERANK_ROUTE}", json=body)
                except httpx.TransportError as error:
                    delay = self._delay(attempt, None)
                    if delay is None:
                        raise RemoteRerankerError(
                            f"the reranking service at {self.url} is unreachable: {error}"
                        ) from error
                else:
                    delay = self._delay(attempt, response)
                    if delay is None:
                        await response.aread()
                        return response
                await asyncio.sleep(delay)
                attempt += 1

    async def ascore(
        self, query: QueryLike, documents: Sequence[DocumentLike], *, instruction: str | None = None
    ) -> list[float]:
        """``score`` with an async HTTP client: no thread, the event loop keeps running."""
        body, parsed = self._body(query, documents, instruction)
        if not parsed:
            return []
        return self._in_order(self._results(await self._apost(body)), len(parsed))

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
        body, parsed = self._body(query, documents, instruction, top_n, min_score)
        if not parsed:
            return []
        return [RerankResult(index, value, parsed[index]) for index, value in self._results(await self._apost(body))]

    def close(self) -> None:
        """Closes the sync HTTP client (the async path opens one per call)."""
        if self._client is not None:
            self._client.close()
            self._client = None


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
