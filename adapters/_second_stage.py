"""The second stage of a retrieval pipeline, as the framework adapters run it.

Engine-agnostic mechanism shared by the LangChain compressor and the LlamaIndex postprocessor (adapters
never import each other): turning a framework's text, metadata and image fields into a :class:`Document`,
calling the reranker with ``top_n``, ``score_threshold`` and an optional deadline, and falling back to
the first-stage order when the reranker is down or slow.

Fail-open rule: the fallback covers failures of the reranker as a service, that is a
:class:`LycheeError` other than :class:`InvalidInputError`, an ``OSError`` (connection refused, reset),
an ``httpx.HTTPError`` and a ``TimeoutError`` (including ``timeout_s``). An :class:`InvalidInputError`
always raises: it means the caller's own query or documents cannot be scored (an unreadable image, an
empty query), and the same input would fail again, so hiding it would hide a bug in the caller's data.
Any other exception (``TypeError``...) is a programming error and raises too. The fallback keeps the first
``top_n`` documents in first-stage order and ignores ``score_threshold``, since there are no rerank scores
to compare with it; :attr:`Selection.failed` and :attr:`Selection.error` say so, and each adapter puts the
error in its result. It is logged on this module's logger: as a warning, or as an error for a refused API
key (:class:`~lychee_rerank.core.errors.RemoteAuthError`), which no retry or wait will mend.

Deadline: ``timeout_s`` is passed down to a reranker that can keep it itself
(:class:`~lychee_rerank.core.interface.SupportsTimeout`, as ``RemoteReranker`` does): the call then ends
within ``timeout_s`` with no thread of its own, sync or async. Only a reranker that cannot be interrupted
(one scoring in this process) is run in a worker thread that is waited for ``timeout_s``; past it the
worker is abandoned and finishes in the background.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import functools
import logging
from collections.abc import Awaitable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import httpx

from lychee_rerank.core.errors import InvalidInputError, LycheeError, RemoteAuthError
from lychee_rerank.core.inputs import Document, ImageInput, Query
from lychee_rerank.core.interface import Reranker, RerankResult, SupportsTimeout

logger = logging.getLogger(__name__)

IMAGE_KEYS: tuple[str, ...] = ("image", "image_path", "image_url", "image_base64")
"""Metadata keys that may hold a document's image, in the order they are looked up."""

RECOVERABLE_ERRORS: tuple[type[BaseException], ...] = (
    LycheeError,
    OSError,
    httpx.HTTPError,
    TimeoutError,
    asyncio.TimeoutError,  # a distinct class before Python 3.11
    concurrent.futures.TimeoutError,  # likewise
)
"""Errors that ``fail_open`` turns into the first-stage order (an ``InvalidInputError`` never does)."""


def _image_from(fields: Mapping[str, Any], image_keys: Sequence[str]) -> ImageInput | None:
    for key in image_keys:
        value = fields.get(key)
        if value is None or (isinstance(value, (str, bytes)) and not value.strip()):
            continue  # an empty field is absent, as frameworks leave unused image fields empty
        return value  # type: ignore[no-any-return]  # checked by Document, which names the bad type
    return None


def document_from_fields(
    text: str | None, fields: Mapping[str, Any] | None = None, image_keys: Sequence[str] = IMAGE_KEYS
) -> Document:
    """A :class:`Document` from a framework's text and the first non-empty image field among ``image_keys``.

    Blank text beside an image means an image-only document, so the prompt carries no empty text part.

    Args:
        text: The document's text (``page_content``, a node's content), possibly empty.
        fields: Metadata or node fields; an image may be a path, URL, data URI, base64, bytes or PIL image.
        image_keys: The keys looked up in ``fields``, first match wins.

    Raises:
        InvalidInputError: An image field holds something that is not an image; the message names the key.

    Example:
        >>> document_from_fields("", {"image_path": "shirt.png", "source": "shop"})
        Document(text=None, image='shirt.png')
    """
    image = _image_from(fields or {}, image_keys)
    if image is None:
        return Document(text=text or "")
    try:
        return Document(text=text if text and text.strip() else None, image=image)
    except InvalidInputError as error:
        key = next(key for key in image_keys if (fields or {}).get(key) is image)
        raise InvalidInputError(f"image field {key!r}: {error}") from None


def query_from_fields(text: str | None, image: ImageInput | None = None) -> Query:
    """A :class:`Query` from the framework's query string and an optional image; blank text + image = image only.

    Example:
        >>> query_from_fields("", "cat.png")
        Query(text=None, image='cat.png')
    """
    if image is None or (isinstance(image, (str, bytes)) and not image.strip()):
        return Query(text=text or "")
    return Query(text=text if text and text.strip() else None, image=image)


@dataclass(frozen=True)
class Pick:
    """One kept document.

    Attributes:
        index: Its position in the first-stage list.
        score: The rerank score in [0, 1]; ``None`` when reranking failed and the first-stage order is kept.
    """

    index: int
    score: float | None


@dataclass(frozen=True)
class Selection:
    """What the second stage kept, best first.

    Attributes:
        picks: The kept documents.
        failed: True when the reranker failed and ``picks`` are the first ``top_n`` in first-stage order.
        error: The reranker's error, as ``"Type: message"``, when ``failed``.
    """

    picks: tuple[Pick, ...]
    failed: bool = False
    error: str | None = None


@dataclass(frozen=True)
class SecondStage:
    """Reranks a first-stage list with ``top_n``, ``score_threshold``, a deadline and the fail-open rule.

    ``run`` and ``arun`` differ only in how they call the reranker (``rerank`` or ``await arerank``);
    what they keep and how they fall back is the same code.

    Args:
        reranker: Any :class:`Reranker`.
        top_n: Keep at most this many; ``None`` keeps all.
        score_threshold: Drop documents scoring below it (``>=`` is kept); ``None`` keeps all.
        instruction: The task instruction or a preset name; ``None`` means the profile's default.
        fail_open: On a reranker failure (see the module docstring), keep the first ``top_n`` in first-stage
            order, flagged and logged, instead of raising.
        timeout_s: Seconds the reranking may take; past it, the call counts as failed. A reranker with
            ``with_timeout`` keeps the deadline itself; any other is run in a worker thread that is abandoned
            at the deadline (and still runs to completion in the background, its answer discarded).

    Example:
        >>> stage = SecondStage(reranker, top_n=1)  # doctest: +SKIP
        >>> stage.run(Query("red dress"), [Document("a car"), Document("a red dress")])  # doctest: +SKIP
        Selection(picks=(Pick(index=1, score=0.91),), failed=False, error=None)
    """

    reranker: Reranker
    top_n: int | None = None
    score_threshold: float | None = None
    instruction: str | None = None
    fail_open: bool = True
    timeout_s: float | None = None

    def run(self, query: Query, documents: Sequence[Document]) -> Selection:
        """Reranks ``documents`` against ``query``, blocking; empty input returns at once."""
        if not documents:
            return Selection(())
        reranker, waited_s = self._bounded()
        call = functools.partial(
            reranker.rerank,
            query,
            documents,
            top_n=self.top_n,
            instruction=self.instruction,
            min_score=self.score_threshold,
        )
        try:
            results = call() if waited_s is None else _call_with_deadline(call, waited_s)
        except RECOVERABLE_ERRORS as error:
            return self._fall_back(error, len(documents))
        return _selection(results)

    async def arun(self, query: Query, documents: Sequence[Document]) -> Selection:
        """Reranks ``documents`` against ``query`` with the reranker's ``arerank``, never blocking the loop."""
        if not documents:
            return Selection(())
        reranker, waited_s = self._bounded()
        call = reranker.arerank(
            query, documents, top_n=self.top_n, instruction=self.instruction, min_score=self.score_threshold
        )
        try:
            results = await (call if waited_s is None else _await_with_deadline(call, waited_s))
        except RECOVERABLE_ERRORS as error:
            return self._fall_back(error, len(documents))
        return _selection(results)

    def _bounded(self) -> tuple[Reranker, float | None]:
        """The reranker to call, and the seconds to wait for it from outside (a thread, ``wait_for``) if any."""
        if self.timeout_s is None:
            return self.reranker, None
        if isinstance(self.reranker, SupportsTimeout):
            return self.reranker.with_timeout(self.timeout_s), None
        return self.reranker, self.timeout_s

    def _fall_back(self, error: BaseException, count: int) -> Selection:
        if not self.fail_open or isinstance(error, InvalidInputError):
            raise error
        described = f"{type(error).__name__}: {error}"
        kept = count if self.top_n is None else min(self.top_n, count)
        # A refused API key is a deployment error no retry will mend: loud, though the search still answers.
        level = logging.ERROR if isinstance(error, RemoteAuthError) else logging.WARNING
        logger.log(
            level,
            "reranking failed (%s); keeping the first %d of %d documents in first-stage order (fail_open=True)",
            described,
            kept,
            count,
        )
        return Selection(tuple(Pick(index, None) for index in range(kept)), failed=True, error=described)


def _selection(results: Sequence[RerankResult]) -> Selection:
    return Selection(tuple(Pick(result.index, result.score) for result in results))


def _timeout_message(timeout_s: float) -> str:
    return f"the reranker did not answer within timeout_s={timeout_s:g} seconds"


async def _await_with_deadline(call: Awaitable[list[RerankResult]], timeout_s: float) -> list[RerankResult]:
    try:
        return await asyncio.wait_for(call, timeout_s)
    except asyncio.TimeoutError:
        raise TimeoutError(_timeout_message(timeout_s)) from None


def _call_with_deadline(call: functools.partial[list[RerankResult]], timeout_s: float) -> list[RerankResult]:
    # A worker of its own per call: a shared pool would queue new calls behind abandoned slow ones.
    executor = concurrent.futures.ThreadPoolExecutor(max_workers=1, thread_name_prefix="lychee-rerank-deadline")
    try:
        return executor.submit(call).result(timeout=timeout_s)
    except concurrent.futures.TimeoutError:
        raise TimeoutError(_timeout_message(timeout_s)) from None
    finally:
        executor.shutdown(wait=False)
