"""From request bodies to queries and documents, under the service's limits, and back to scores.

Documents arrive as strings, ``{text?, image?}`` objects or vLLM-style content lists; a string that holds
a JSON ``{"text", "image"}`` object becomes a multimodal document when the request asks for it (search
engines send only strings). Text longer than ``max_document_tokens`` tokens is cut to that many.

The event loop only moves bytes: checking a request's inputs, truncating, decoding images and tokenising
run in threads, and tokens are counted before the request is queued, so the scheduler batches on exact
counts (as text-embeddings-inference does).
"""

from __future__ import annotations

import asyncio
import json
import math
import os
import sys
import threading
import time
from collections.abc import Callable, Hashable, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from concurrent.futures import TimeoutError as FutureTimeoutError
from contextlib import AbstractContextManager, nullcontext, suppress
from dataclasses import dataclass, replace
from functools import partial
from typing import Any

from fastapi import Request

from lychee_rerank.core import wire
from lychee_rerank.core.errors import InvalidInputError
from lychee_rerank.core.inputs import Document, DocumentLike, Query, QueryLike, as_documents, as_query
from lychee_rerank.core.interface import BaseReranker
from lychee_rerank.core.local.engine import EncodedRequest, ScoringEngine
from lychee_rerank.core.media import MediaPolicy
from lychee_rerank.core.profiles import resolve_instruction
from lychee_rerank.core.server.errors import ServiceError
from lychee_rerank.core.server.fetching import ImageFetcher
from lychee_rerank.core.server.forwarding import WAITED_SCOPE_KEY
from lychee_rerank.core.server.protocol import Content
from lychee_rerank.core.server.scheduler import (
    BatchFunction,
    PlainRequest,
    QueueFullError,
    Scheduler,
    SchedulerClosedError,
    Work,
    group_key,
)
from lychee_rerank.core.server.settings import ServerSettings

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


def checked_text(text: str, where: str) -> int:
    """The UTF-8 size of ``text``; invalid Unicode (a lone surrogate from a ``\ud800`` escape) is refused.

    Raises:
        InvalidInputError: Naming ``where`` (``documents[3].text``) and the bad character's position (422).
    """
    try:
        return len(text.encode("utf-8"))
    except UnicodeEncodeError as error:
        code = ord(text[error.start])
        raise InvalidInputError(
            f"{where}: the text is not valid Unicode (a lone surrogate U+{code:04X} at character {error.start}); "
            "send valid UTF-8 text"
        ) from None


class Truncator:
    """Cuts text to at most ``max_tokens`` tokens of the model's tokenizer.

    Args:
        tokenizer: The model's tokenizer.
        max_tokens: The cut.
        lock: Held around each use of the tokenizer (the engine's ``tokenizer_lock``), so truncating in
            one thread and encoding in another never use the tokenizer at once.
    """

    def __init__(self, tokenizer: Any, max_tokens: int, lock: AbstractContextManager[Any] | None = None) -> None:
        self.tokenizer = tokenizer
        self.max_tokens = max_tokens
        self.truncated = 0
        self._lock = lock if lock is not None else nullcontext()

    def __call__(self, text: str, max_tokens: int | None = None) -> str:
        limit = self.max_tokens if max_tokens is None else min(max_tokens, self.max_tokens)
        # Every token is at least one byte, so short text needs no tokenising at all.
        if len(text.encode("utf-8", "surrogatepass")) <= limit:
            return text
        head = text[: limit * _TRUNCATE_CHECK_CHARS]  # bounds the tokeniser's work on huge text
        with self._lock:
            encoded = self.tokenizer(head, add_special_tokens=False, return_offsets_mapping=True)
        offsets = encoded["offset_mapping"]
        if len(offsets) <= limit and len(head) == len(text):
            return text
        self.truncated += 1
        end = offsets[limit - 1][1] if len(offsets) >= limit else offsets[-1][1]
        return text[:end]

    def apply(
        self, query: Query, documents: list[Document], max_tokens: int | None = None
    ) -> tuple[Query, list[Document]]:
        """The query cut to ``max_tokens`` of the service, each document also to ``max_tokens`` when lower."""

        def cut(item: Any, limit: int | None) -> Any:
            return item if item.text is None else replace(item, text=self(item.text, limit))

        return cut(query, None), [cut(document, max_tokens) for document in documents]


def build_inputs(
    query: str | Content,
    documents: Sequence[str | Content],
    settings: ServerSettings,
    *,
    instruction: str | None = None,
    json_documents: bool = False,
    field: str = "documents[{index}]",
) -> tuple[Query, list[Document], list[dict[str, str]]]:
    """The query and documents of a request, checked against the limits (call it off the event loop).

    Text is not truncated here: that is tokenising, done when the request is prepared for the model.

    Args:
        query: As sent.
        documents: As sent.
        settings: The limits.
        instruction: As sent; only checked here.
        json_documents: Parse strings holding ``{"text", "image"}`` objects.
        field: Where a document is in the request body, for error messages (``texts[{index}]`` for TEI).

    Returns:
        The query, the documents, and each document's fields as sent (for echoing).

    Raises:
        ServiceError: Too many documents or too much text (413), none (400) or an empty query (400).
        InvalidInputError: A query or document that cannot be scored, or invalid Unicode (422).
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
    total = 0 if instruction is None else checked_text(instruction, "instruction")
    for name, value in query_fields.items():
        size = checked_text(value, "query" if isinstance(query, str) else f"query.{name}")
        total += size if name == "text" else 0
    if query_fields.get("text", "").strip() == "" and "image" not in query_fields:
        raise ServiceError(400, "invalid_input", "the query is empty; send query text or a query image")
    raw = []
    parsed = []
    for index, document in enumerate(documents):
        where = field.format(index=index)
        fields = content_fields(document, f"document {index}", json_documents=json_documents)
        for name, value in fields.items():
            size = checked_text(value, where if isinstance(document, str) else f"{where}.{name}")
            total += size if name == "text" else 0
        try:
            parsed.append(Document(**fields))
        except InvalidInputError as error:
            raise InvalidInputError(f"document {index}: {error}") from None
        raw.append(fields)
    if total > settings.max_request_text_bytes:
        raise ServiceError(
            413,
            "too_large",
            f"the request holds {total} bytes of text, more than the limit of {settings.max_request_text_bytes} "
            "(--max-request-text-bytes, LYCHEE_MAX_REQUEST_TEXT_BYTES); send fewer or shorter documents",
        )
    return Query(**query_fields), parsed, raw


def logit(probability: float) -> float:
    """The log-odds of a probability (TEI's ``raw_scores``), finite at 0 and 1."""
    clipped = min(max(probability, 1e-12), 1 - 1e-12)
    return math.log(clipped / (1 - clipped))


# -- preparing requests for the scheduler ---------------------------------------------------------


@dataclass(frozen=True)
class EncodedWork:
    """A request the engine has encoded, as the scheduler sees it (exact tokens)."""

    encoded: EncodedRequest
    group: Hashable

    @property
    def tokens(self) -> int:
        """Exact prompt tokens of every pair."""
        return self.encoded.tokens

    @property
    def size(self) -> int:
        """Documents."""
        return len(self.encoded)


Prepare = Callable[[Query, list[Document], "str | None", "int | None"], Work]
"""Turns (query, documents, instruction, max tokens per document) into the scheduler's work: it truncates,
decodes and tokenises, so it runs in the preparing threads, never on the event loop or the model's thread."""


def engine_preparer(engine: ScoringEngine, truncate: Truncator, policy: MediaPolicy | None = None) -> Prepare:
    """Prepare with the engine: truncate, then :meth:`ScoringEngine.encode` (images read under ``policy``)."""

    def prepare(query: Query, documents: list[Document], instruction: str | None, max_tokens: int | None) -> Work:
        query, documents = truncate.apply(query, documents, max_tokens)
        encoded = engine.encode(query, documents, instruction, media_policy=policy)
        return EncodedWork(encoded, group_key(query, instruction))

    return prepare


def engine_batches(engine: ScoringEngine) -> BatchFunction[Any]:
    """The scheduler's call for :class:`EncodedWork`: :meth:`ScoringEngine.score_encoded`."""

    def run(works: Sequence[EncodedWork], share_prefix: bool) -> list[list[float]]:
        return engine.score_encoded([work.encoded for work in works], share_prefix=share_prefix)

    return run


def plain_preparer(truncate: Truncator | None) -> Prepare:
    """Prepare for a plain ``score`` function: truncate only (nothing is tokenised ahead)."""

    def prepare(query: Query, documents: list[Document], instruction: str | None, max_tokens: int | None) -> Work:
        if truncate is not None:
            query, documents = truncate.apply(query, documents, max_tokens)
        return PlainRequest(query, documents, instruction)

    return prepare


# -- the scheduled reranker ---------------------------------------------------------------------


@dataclass(frozen=True)
class Scored:
    """A request's scores, and the prompt tokens they took (exact when the engine prepared the request)."""

    scores: list[float]
    tokens: int


class ScheduledReranker(BaseReranker):
    """A :class:`~lychee_rerank.core.Reranker` whose work goes through the service's scheduler.

    A request goes: image URLs downloaded (on the event loop, under the fetcher's caps), then prepared in a
    small pool of threads (truncated, images decoded, tokenised), then queued for the model's one thread.
    One deadline covers all of it; when it passes, or the client disconnects, downloads are cancelled and
    queued work is dropped. ``ascore``/``arerank`` never block the event loop; ``score``/``rerank``
    block the calling thread (never call them on the event loop). This is what the UI is given.

    Args:
        scheduler: The running scheduler.
        timeout_s: Time allowed per request, from its arrival to its scores.
        prepare: Turns a request into the scheduler's work (:data:`Prepare`).
        fetcher: Downloads http(s) images before preparing; without it the engine reads URLs itself.
        prepare_threads: Threads preparing text-only requests; requests with images get a pool of their
            own of one fewer (at least one), run at a lower CPU priority on Linux, so text requests
            neither wait for a thread nor for the CPU behind image decoding.
    """

    def __init__(
        self,
        scheduler: Scheduler[Any],
        timeout_s: float,
        *,
        prepare: Prepare,
        fetcher: ImageFetcher | None = None,
        prepare_threads: int = 4,
    ) -> None:
        if prepare_threads < 1:
            raise ValueError(f"prepare_threads must be at least 1, got {prepare_threads}")
        self.scheduler = scheduler
        self.timeout_s = timeout_s
        self.prepare = prepare
        self.fetcher = fetcher
        self._pool = ThreadPoolExecutor(prepare_threads, thread_name_prefix="lychee-prepare")
        self._image_pool = ThreadPoolExecutor(
            max(1, prepare_threads - 1), thread_name_prefix="lychee-decode", initializer=_lower_priority
        )

    async def aclose(self) -> None:
        """Stops the preparing threads (queued preparations are dropped) and closes the fetcher."""
        self._pool.shutdown(wait=False, cancel_futures=True)
        self._image_pool.shutdown(wait=False, cancel_futures=True)
        if self.fetcher is not None:
            await self.fetcher.aclose()

    def _submit(self, work: Work) -> Future[list[float]]:
        try:
            return self.scheduler.submit(work)
        except QueueFullError as error:
            raise ServiceError(
                429, "overloaded", str(error), headers={"Retry-After": str(error.retry_after_s)}
            ) from None
        except SchedulerClosedError as error:
            raise ServiceError(503, "unavailable", str(error)) from None

    def score(
        self, query: QueryLike, documents: Sequence[DocumentLike], *, instruction: str | None = None
    ) -> list[float]:
        """Scores through the scheduler, blocking this thread (which also prepares the request)."""
        deadline = time.monotonic() + self.timeout_s
        work = self.prepare(as_query(query), as_documents(documents), resolve_instruction(instruction), None)
        future = self._submit(work)
        try:
            return future.result(timeout=max(deadline - time.monotonic(), 0))
        except FutureTimeoutError:  # not the builtin TimeoutError before Python 3.11
            future.cancel()
            raise _timeout(self.timeout_s) from None

    async def ascore(
        self, query: QueryLike, documents: Sequence[DocumentLike], *, instruction: str | None = None
    ) -> list[float]:
        """Scores through the scheduler without blocking the event loop."""
        scored = await self.score_request(as_query(query), as_documents(documents), instruction=instruction)
        return scored.scores

    async def score_request(
        self,
        query: Query,
        documents: list[Document],
        *,
        instruction: str | None = None,
        request: Request | None = None,
        max_tokens: int | None = None,
    ) -> Scored:
        """Scores a request's query and documents, already converted at the service boundary.

        The deadline counts from the request's arrival (see :class:`ArrivalMiddleware`) when ``request``
        is given. Past it the answer is 504; when ``request``'s client disconnects, 499. Either way the
        request's downloads are cancelled and its queued work dropped.
        """
        arrived = arrival_of(request) if request is not None else None
        deadline = (arrived if arrived is not None else time.monotonic()) + self.timeout_s
        work = asyncio.ensure_future(self._run(query, documents, resolve_instruction(instruction), max_tokens))
        watcher = asyncio.ensure_future(_wait_for_disconnect(request)) if request is not None else None
        waiting: set[asyncio.Future[Any]] = {work} if watcher is None else {work, watcher}
        try:
            done, _ = await asyncio.wait(
                waiting, timeout=max(deadline - time.monotonic(), 0), return_when=asyncio.FIRST_COMPLETED
            )
        finally:
            if watcher is not None:
                watcher.cancel()
            if not work.done():
                work.cancel()  # cancels the downloads, and the queued job too: the scheduler skips it
        if work in done:
            return work.result()
        if watcher is not None and watcher in done:
            raise ServiceError(499, "client_closed", "the client disconnected")
        raise _timeout(self.timeout_s)

    async def _run(
        self, query: Query, documents: list[Document], instruction: str | None, max_tokens: int | None
    ) -> Scored:
        if self.fetcher is not None:
            query, documents = await self.fetcher.fetch(query, documents)
        loop = asyncio.get_running_loop()
        prepare = partial(self.prepare, query, documents, instruction, max_tokens)
        has_images = query.image is not None or any(document.image is not None for document in documents)
        work = await loop.run_in_executor(self._image_pool if has_images else self._pool, prepare)
        scores = await asyncio.wrap_future(self._submit(work))
        return Scored(scores, work.tokens)


_DECODE_NICENESS = 10


def _lower_priority() -> None:
    """Lowers the calling thread's CPU priority (Linux: niceness is per thread; elsewhere nothing)."""
    if sys.platform.startswith("linux"):
        # Not allowed here: decoding still works, at normal priority.
        with suppress(OSError):
            os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), _DECODE_NICENESS)


# -- arrival time and disconnects -----------------------------------------------------------------

_ARRIVED = "lychee_rerank.arrived"


class ArrivalMiddleware:
    """Stamps each request's arrival (before its body is read), where its deadline counts from."""

    def __init__(self, app: Callable[..., Any]) -> None:
        self.app = app

    async def __call__(self, scope: dict[str, Any], receive: Callable[..., Any], send: Callable[..., Any]) -> None:
        if scope["type"] == "http":
            waited = scope.get(WAITED_SCOPE_KEY, 0.0)
            scope[_ARRIVED] = time.monotonic() - (waited if isinstance(waited, float) and waited > 0 else 0.0)
        await self.app(scope, receive, send)


def arrival_of(request: Request) -> float | None:
    """When ``request`` arrived (``time.monotonic()``), if :class:`ArrivalMiddleware` saw it."""
    arrived = request.scope.get(_ARRIVED)
    return arrived if isinstance(arrived, float) else None


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
