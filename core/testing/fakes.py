"""Rerankers without a model, for testing what is built around a reranker (fail-open paths, timeouts).

They implement the :class:`~lychee_rerank.core.Reranker` protocol, so they can stand in for a
``LocalReranker`` or ``RemoteReranker`` in any adapter.

Example:
    >>> from lychee_rerank.core.errors import LycheeError
    >>> FailingReranker(LycheeError("service down")).calls
    0
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Sequence

from lychee_rerank.core.inputs import Document, DocumentLike, Query, QueryLike, as_documents, as_query
from lychee_rerank.core.interface import BaseReranker


class FailingReranker(BaseReranker):
    """Raises ``error`` on every call (sync and async), counting the calls."""

    def __init__(self, error: BaseException) -> None:
        self.error = error
        self.calls = 0

    def score(
        self, query: QueryLike, documents: Sequence[DocumentLike], *, instruction: str | None = None
    ) -> list[float]:
        """Counts the call and raises the configured error."""
        self.calls += 1
        raise self.error


class SlowReranker(BaseReranker):
    """Answers ``score`` for every document after ``delay_s``; the async path sleeps on the event loop, as an
    HTTP client would, so timeouts and non-blocking behaviour can be tested."""

    def __init__(self, delay_s: float, score: float = 0.5) -> None:
        self.delay_s = delay_s
        self.fixed_score = score

    def score(
        self, query: QueryLike, documents: Sequence[DocumentLike], *, instruction: str | None = None
    ) -> list[float]:
        """Blocks for ``delay_s``, then answers."""
        time.sleep(self.delay_s)
        return [self.fixed_score] * len(documents)

    async def ascore(
        self, query: QueryLike, documents: Sequence[DocumentLike], *, instruction: str | None = None
    ) -> list[float]:
        """Sleeps ``delay_s`` on the event loop, then answers."""
        await asyncio.sleep(self.delay_s)
        return [self.fixed_score] * len(documents)


class TableReranker(BaseReranker):
    """Scores each document by looking its text up in ``table``, and records every call.

    Args:
        table: Document text → score.
        default: The score of a text missing from the table; ``None`` makes a missing text a KeyError.
        error: Raised by every call instead of scoring (after recording it), to test failure paths.
        delay_s: Blocks this long before answering, to test timeouts.
    """

    def __init__(
        self,
        table: dict[str, float],
        *,
        default: float | None = None,
        error: BaseException | None = None,
        delay_s: float = 0.0,
    ) -> None:
        self.table = table
        self.default = default
        self.error = error
        self.delay_s = delay_s
        self.calls: list[tuple[Query, list[Document], str | None]] = []

    def score(
        self, query: QueryLike, documents: Sequence[DocumentLike], *, instruction: str | None = None
    ) -> list[float]:
        """Records the call, then answers from the table (or waits, or raises, as configured)."""
        parsed = as_documents(documents)
        self.calls.append((as_query(query), parsed, instruction))
        if self.delay_s:
            time.sleep(self.delay_s)
        if self.error is not None:
            raise self.error
        if self.default is None:
            return [self.table[document.text or ""] for document in parsed]
        return [self.table.get(document.text or "", self.default) for document in parsed]
