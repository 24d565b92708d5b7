"""From request bodies to queries and documents, under the service's limits, and back to scores.

Documents arrive as strings, ``{text?, image?}`` objects or vLLM-style content lists; a string that holds
a JSON ``{"text", "image"}`` object becomes a multimodal document when the request asks for it (search
engines send only strings). Text longer than ``max_document_tokens`` tokens is cut to that many.
"""

from __future__ import annotations

import asyncio
import json
import math
from collections.abc import Sequence
from concurrent.futures import Future
from concurrent.futures import TimeoutError as FutureTimeoutError
from dataclasses import replace
from typing import Any

from fastapi import Request

from lychee_rerank.core import wire
from lychee_rerank.core.errors import ImageError, InvalidInputError
from lychee_rerank.core.inputs import Document, DocumentLike, Query, QueryLike, as_documents, as_query
from lychee_rerank.core.interface import BaseReranker
from lychee_rerank.core.media import MediaPolicy, read_image_bytes
from lychee_rerank.core.profiles import resolve_instruction
from lychee_rerank.core.server.errors import ServiceError
from lychee_rerank.core.server.protocol import Content
from lychee_rerank.core.server.scheduler import QueueFullError, Scheduler, SchedulerClosedError
from lychee_rerank.core.server.settings import ServerSettings
from lychee_rerank.core.sources import is_url

_TRUNCATE_CHECK_CHARS = 32  # no token of these tokenizers is longer than this many characters


def content_fields(value: str | Content, where: str, *, json_documents: bool = False) -> dict[str, str]:
    """``{"text"?, "image"?}`` from a string or a content object (vLLM content lists included)."""
    if isinstance(value, str):
        parsed = _json_document(value) if json_documents else None
        return parsed if parsed is not None else {"text": value}
    fields: dict[str, str] = {}
    if value.content is not None:
        if value.text is not None or value.image is not None:
            raise InvalidInputError(f"{where}: give either 'content' or 'text'/'image', not both")
        texts: list[str] = []
        images: list[str] = []
        for part in value.content:
            if part.type == "text":
                if part.text is None:
                    raise InvalidInputError(f"{where}: a text part needs 'text'")
                texts.append(part.text)
            else:
                url = part.image_url.url if part.image_url is not None and not isinstance(part.image_url, str) else None
                source = url or (part.image_url if isinstance(part.image_url, str) else None) or part.image
                if not source:
                    raise InvalidInputError(f"{where}: an {part.type} part needs an image URL or data")
                images.append(source)
        if len(images) > 1:
            raise InvalidInputError(f"{where}: one image per query or document, got {len(images)}")
        if texts:
            fields["text"] = "\n".join(texts)
        if images:
            fields["image"] = images[0]
    else:
        if value.text is not None:
            fields["text"] = value.text
        if value.image is not None:
            fields["image"] = value.image
    if not fields:
        raise InvalidInputError(f"{where}: needs text, an image, or both")
    return fields


def _json_document(value: str) -> dict[str, str] | None:
    """A string holding ``{"text": ..., "image": ...}`` as that mapping; anything else stays text."""
    stripped = value.strip()
    if not stripped.startswith("{"):
        return None
    try:
        parsed = json.loads(stripped)
    except (ValueError, RecursionError):
        return None
    if not isinstance(parsed, dict) or not parsed or set(parsed) - {"text", "image"}:
        return None
    if not all(isinstance(item, str) or item is None for item in parsed.values()):
        return None
    fields = {key: item for key, item in parsed.items() if isinstance(item, str) and item}
    return fields or None


def wants_json_documents(request: Request, settings: ServerSettings) -> bool:
    """Whether string documents holding JSON objects should become multimodal documents."""
    flag = request.query_params.get(wire.JSON_DOCUMENTS_PARAM) or request.headers.get(wire.JSON_DOCUMENTS_HEADER)
    if flag is None:
        return settings.json_documents
    return flag.strip().lower() in ("1", "true", "yes", "on")


class Truncator:
    """Cuts text to at most ``max_tokens`` tokens of the model's tokenizer."""

    def __init__(self, tokenizer: Any, max_tokens: int) -> None:
        self.tokenizer = tokenizer
        self.max_tokens = max_tokens
        self.truncated = 0

    def __call__(self, text: str) -> str:
        # Every token is at least one byte, so short text needs no tokenising at all.
        if len(text.encode("utf-8", "surrogatepass")) <= self.max_tokens:
            return text
        head = text[: self.max_tokens * _TRUNCATE_CHECK_CHARS]  # bounds the tokeniser's work on huge text
        encoded = self.tokenizer(head, add_special_tokens=False, return_offsets_mapping=True)
        offsets = encoded["offset_mapping"]
        if len(offsets) <= self.max_tokens and len(head) == len(text):
            return text
        self.truncated += 1
        end = offsets[self.max_tokens - 1][1] if len(offsets) >= self.max_tokens else offsets[-1][1]
        return text[:end]


def build_inputs(
    query: str | Content,
    documents: Sequence[str | Content],
    settings: ServerSettings,
    truncate: Truncator | None,
    *,
    json_documents: bool = False,
    max_tokens: int | None = None,
) -> tuple[Query, list[Document], list[dict[str, str]]]:
    """The query and documents of a request, checked against the limits.

    Returns:
        The query, the documents (text truncated), and each document's fields as sent (for echoing).

    Raises:
        ServiceError: Too many documents (413), none (400) or an empty query (400).
        InvalidInputError: A query or document that cannot be scored (422).
    """
    if len(documents) > settings.max_documents:
        raise ServiceError(
            413,
            "too_large",
            f"{len(documents)} documents, more than the limit of {settings.max_documents} per request; "
            "split the request",
        )
    if not documents:
        raise ServiceError(400, "invalid_input", "documents is empty; send at least one document")
    query_fields = content_fields(query, "query")
    if query_fields.get("text", "").strip() == "" and "image" not in query_fields:
        raise ServiceError(400, "invalid_input", "the query is empty; send query text or a query image")
    raw = [
        content_fields(document, f"document {index}", json_documents=json_documents)
        for index, document in enumerate(documents)
    ]
    limited = truncate
    if truncate is not None and max_tokens is not None and max_tokens < truncate.max_tokens:
        limited = Truncator(truncate.tokenizer, max_tokens)

    def cut(fields: dict[str, str], cutter: Truncator | None) -> dict[str, str]:
        if cutter is None or "text" not in fields:
            return fields
        return {**fields, "text": cutter(fields["text"])}

    query_value = Query(**cut(query_fields, truncate))
    parsed = []
    for index, fields in enumerate(raw):
        try:
            parsed.append(Document(**cut(fields, limited)))
        except InvalidInputError as error:
            raise InvalidInputError(f"document {index}: {error}") from None
    return query_value, parsed, raw


def logit(probability: float) -> float:
    """The log-odds of a probability (TEI's ``raw_scores``), finite at 0 and 1."""
    clipped = min(max(probability, 1e-12), 1 - 1e-12)
    return math.log(clipped / (1 - clipped))


class ScheduledReranker(BaseReranker):
    """A :class:`~lychee_rerank.core.Reranker` whose work goes through the service's scheduler.

    ``ascore``/``arerank`` await the scheduler without a thread; ``score``/``rerank`` block the calling
    thread (never call them on the event loop). This is what the UI is given.

    Args:
        scheduler: The running scheduler.
        timeout_s: Time allowed per call, queueing included.
        media_policy: When given, http(s) images are downloaded under it *before* the request is queued,
            so the model's worker never waits on the network (the engine then reads the bytes).
    """

    def __init__(self, scheduler: Scheduler, timeout_s: float, media_policy: MediaPolicy | None = None) -> None:
        self.scheduler = scheduler
        self.timeout_s = timeout_s
        self.media_policy = media_policy

    def _submit(self, query: Query, documents: list[Document], instruction: str | None) -> Future[list[float]]:
        try:
            return self.scheduler.submit(query, documents, resolve_instruction(instruction))
        except QueueFullError as error:
            raise ServiceError(
                429, "overloaded", str(error), headers={"Retry-After": str(error.retry_after_s)}
            ) from None
        except SchedulerClosedError as error:
            raise ServiceError(503, "unavailable", str(error)) from None

    def score(
        self, query: QueryLike, documents: Sequence[DocumentLike], *, instruction: str | None = None
    ) -> list[float]:
        """Scores through the scheduler, blocking this thread."""
        future = self._submit(as_query(query), as_documents(documents), instruction)
        try:
            return future.result(timeout=self.timeout_s)
        except FutureTimeoutError:  # not the builtin TimeoutError before Python 3.11
            future.cancel()
            raise _timeout(self.timeout_s) from None

    async def ascore(
        self, query: QueryLike, documents: Sequence[DocumentLike], *, instruction: str | None = None
    ) -> list[float]:
        """Scores through the scheduler without blocking the event loop or using a thread."""
        return await self.score_request(as_query(query), as_documents(documents), instruction=instruction)

    async def score_request(
        self,
        query: Query,
        documents: list[Document],
        *,
        instruction: str | None = None,
        request: Request | None = None,
    ) -> list[float]:
        """Scores a request's query and documents, already converted at the service boundary.

        Gives up, dropping the queued work, when ``request``'s client disconnects.
        """
        if self.media_policy is not None:
            query, documents = await fetch_image_urls(query, documents, self.media_policy)
        future = asyncio.wrap_future(self._submit(query, documents, instruction))
        watcher = asyncio.ensure_future(_wait_for_disconnect(request)) if request is not None else None
        waiting: set[asyncio.Future[Any]] = {future} if watcher is None else {future, watcher}
        try:
            done, _ = await asyncio.wait(waiting, timeout=self.timeout_s, return_when=asyncio.FIRST_COMPLETED)
        finally:
            if watcher is not None:
                watcher.cancel()
        if future in done:
            return future.result()
        future.cancel()  # cancels the queued job too: the scheduler skips it
        if watcher is not None and watcher in done:
            raise ServiceError(499, "client_closed", "the client disconnected")
        raise _timeout(self.timeout_s)


async def fetch_image_urls(
    query: Query, documents: list[Document], policy: MediaPolicy
) -> tuple[Query, list[Document]]:
    """The query and documents with every http(s) image replaced by its downloaded bytes.

    Each distinct URL is fetched once, in worker threads, under ``policy`` (address checks, size and time
    caps). Scores do not change: the engine identifies images by the bytes' content either way.

    Raises:
        ImageError: The first refused or failed download, located (``document 3: ...``).
    """
    items: list[tuple[str, Query | Document]] = [("query", query)]
    items += [(f"document {index}", document) for index, document in enumerate(documents)]
    urls = list(dict.fromkeys(str(item.image) for _, item in items if is_url(item.image)))
    if not urls:
        return query, documents
    outcomes = await asyncio.gather(
        *(asyncio.to_thread(read_image_bytes, url, policy) for url in urls), return_exceptions=True
    )
    fetched = dict(zip(urls, outcomes, strict=True))
    for where, item in items:
        outcome = fetched.get(str(item.image)) if is_url(item.image) else None
        if isinstance(outcome, ImageError):
            raise outcome.located(where) from outcome.__cause__
        if isinstance(outcome, BaseException):
            raise outcome

    def swap(item: Any) -> Any:
        return replace(item, image=fetched[str(item.image)]) if is_url(item.image) else item

    return swap(query), [swap(document) for document in documents]


def _timeout(seconds: float) -> ServiceError:
    return ServiceError(
        504, "timeout", f"the request took longer than the {seconds:g} s allowed; send fewer documents or retry"
    )


async def _wait_for_disconnect(request: Request | None) -> None:
    if request is None:
        await asyncio.Event().wait()
        return
    while True:
        message = await request.receive()
        if message["type"] == "http.disconnect":
            return
