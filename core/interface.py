"""The one interface every adapter depends on: ``Reranker``, ``BaseReranker``, ``RerankResult``, ``rank``.

``rerank`` is written once, on top of ``score`` (score, sort, cut), as sentence-transformers'
``CrossEncoder.rank`` is; backends only implement ``score``. Async methods run the same work in a
worker thread, so they never block the event loop.

This module imports nothing heavy (no torch, no HTTP client): the light client install, the adapters and
the plugins all stand on it. The backends are :class:`lychee_rerank.core.local.LocalReranker` (the model in
this process, the ``[local]`` extra) and :class:`lychee_rerank.core.remote.RemoteReranker` (the service).
"""

from __future__ import annotations

import asyncio
import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol, runtime_checkable

from lychee_rerank.core.errors import InvalidInputError
from lychee_rerank.core.inputs import Document, DocumentLike, QueryLike, as_documents


@dataclass(frozen=True)
class RerankResult:
    """One document's place in a reranked list.

    Attributes:
        index: The document's position in the list that was passed in.
        score: The probability in [0, 1] that the document satisfies the query.
        document: The document, as a :class:`Document`.
    """

    index: int
    score: float
    document: Document


@runtime_checkable
class Reranker(Protocol):
    """What adapters need from a reranker, local or remote."""

    def score(
        self, query: QueryLike, documents: Sequence[DocumentLike], *, instruction: str | None = None
    ) -> list[float]:
        """Scores each document against the query; input order, each in [0, 1]."""
        ...

    def rerank(
        self,
        query: QueryLike,
        documents: Sequence[DocumentLike],
        *,
        top_n: int | None = None,
        instruction: str | None = None,
        min_score: float | None = None,
    ) -> list[RerankResult]:
        """Documents sorted by score, best first, cut at ``min_score`` and ``top_n``."""
        ...

    async def ascore(
        self, query: QueryLike, documents: Sequence[DocumentLike], *, instruction: str | None = None
    ) -> list[float]:
        """``score`` without blocking the event loop."""
        ...

    async def arerank(
        self,
        query: QueryLike,
        documents: Sequence[DocumentLike],
        *,
        top_n: int | None = None,
        instruction: str | None = None,
        min_score: float | None = None,
    ) -> list[RerankResult]:
        """``rerank`` without blocking the event loop."""
        ...


@runtime_checkable
class SupportsTimeout(Protocol):
    """A reranker that can keep a deadline itself: its calls return or raise within ``seconds``.

    Adapters with a ``timeout_s`` call ``reranker.with_timeout(timeout_s)`` when the reranker has it, so a
    slow call ends on its own (no worker thread left behind); other rerankers are waited for in a thread.
    :class:`~lychee_rerank.core.remote.RemoteReranker` has it.
    """

    def with_timeout(self, seconds: float) -> Reranker:
        """The same reranker whose every call returns or raises within ``seconds``."""
        ...


def check_rerank_options(top_n: int | None, min_score: float | None) -> None:
    """Refuses a negative ``top_n`` or a ``min_score`` that is not a number (bool and NaN included)."""
    if top_n is not None and (isinstance(top_n, bool) or not isinstance(top_n, int) or top_n < 0):
        raise InvalidInputError(f"top_n must be a non-negative integer or None, got {top_n!r}")
    if min_score is not None and (
        isinstance(min_score, bool) or not isinstance(min_score, (int, float)) or math.isnan(min_score)
    ):
        raise InvalidInputError(f"min_score must be a number or None, got {min_score!r}")


def rank(
    documents: Sequence[Document], scores: Sequence[float], *, top_n: int | None, min_score: float | None
) -> list[RerankResult]:
    """Sorts by score (ties keep input order), drops scores under ``min_score``, keeps ``top_n``.

    Example:
        >>> [r.index for r in rank([Document("a"), Document("b")], [0.2, 0.9], top_n=1, min_score=None)]
        [1]
    """
    results = [RerankResult(i, s, d) for i, (d, s) in enumerate(zip(documents, scores, strict=True))]
    results.sort(key=lambda result: (-result.score, result.index))
    if min_score is not None:
        results = [result for result in results if result.score >= min_score]
    return results if top_n is None else results[:top_n]


class BaseReranker:
    """``rerank``, ``ascore`` and ``arerank`` on top of a subclass's ``score``."""

    def score(
        self, query: QueryLike, documents: Sequence[DocumentLike], *, instruction: str | None = None
    ) -> list[float]:
        """Scores each document against the query; input order, each in [0, 1]."""
        raise NotImplementedError

    def rerank(
        self,
        query: QueryLike,
        documents: Sequence[DocumentLike],
        *,
        top_n: int | None = None,
        instruction: str | None = None,
        min_score: float | None = None,
    ) -> list[RerankResult]:
        """Documents sorted by score, best first; ``min_score`` drops, ``top_n`` keeps the best N.

        Example:
            >>> results = reranker.rerank("red dress", ["a red dress", "a blue car"], top_n=1)  # doctest: +SKIP
            >>> results[0].index  # doctest: +SKIP
            0
        """
        check_rerank_options(top_n, min_score)
        parsed = as_documents(documents)
        return rank(parsed, self.score(query, parsed, instruction=instruction), top_n=top_n, min_score=min_score)

    async def ascore(
        self, query: QueryLike, documents: Sequence[DocumentLike], *, instruction: str | None = None
    ) -> list[float]:
        """``score`` in a worker thread, so the event loop keeps running."""
        return await asyncio.to_thread(self.score, query, documents, instruction=instruction)

    async def arerank(
        self,
        query: QueryLike,
        documents: Sequence[DocumentLike],
        *,
        top_n: int | None = None,
        instruction: str | None = None,
        min_score: float | None = None,
    ) -> list[RerankResult]:
        """``rerank`` on top of ``ascore``, so the event loop keeps running while documents are scored."""
        check_rerank_options(top_n, min_score)
        parsed = as_documents(documents)
        scores = await self.ascore(query, parsed, instruction=instruction)
        return rank(parsed, scores, top_n=top_n, min_score=min_score)
