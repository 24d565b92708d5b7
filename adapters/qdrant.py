"""Qdrant: rerank what ``query_points`` finds, text and images, with Lychee-Rerank-MM.

:class:`QdrantReranker` (``QdrantClient``: ``":memory:"``, ``path=``, a server URL) and
:class:`AsyncQdrantReranker` (``AsyncQdrantClient``) run the caller's ``query_points`` (any query,
``prefetch``, fusion and ``query_filter``) with ``limit = window``, score each candidate's payload text and
image fields with the reranker, then apply ``score_threshold`` and ``offset``/``limit`` to the reranked
list, and return an ordinary ``QueryResponse``.

What comes back, and the documented payload keys:

- ``point.score`` is the rerank score in [0, 1] (best first). The first-stage score (fusion, cosine...)
  is kept under ``payload["_first_stage_score"]`` (:data:`FIRST_STAGE_SCORE_KEY`; the key is a
  constructor option, ``None`` leaves it out).
- ``with_payload`` is honoured: payload fields fetched only for reranking are removed again. With
  ``with_payload=False`` the payload holds only the keys above (or is ``None`` when there are none).
- Fail-open: when the reranker is down, slow (past ``timeout_s``) or refuses the API key, the window comes
  back in first-stage order, ``score`` is the first-stage score, ``payload["_rerank_failed"]``
  (:data:`RERANK_FAILED_KEY`) is ``True``, ``payload["_rerank_error"]`` (:data:`RERANK_ERROR_KEY`) says
  why (``"RemoteAuthError: ..."``), it is logged (as an error for a refused API key, else a warning), and
  ``score_threshold`` is not applied (it is a threshold on rerank scores).
  ``fail_open=False`` raises instead. Which errors fall back is the rule of
  :mod:`lychee_rerank.adapters._second_stage`; invalid input (an unreadable image) always raises.
- Returned points are copies; neither the caller's arguments nor the client's objects are changed.

Only the window is reranked: ``offset``/``limit`` page inside it, so a page past the window is short
or empty (raise ``window`` to page deeper); the window is never smaller than ``limit``. Qdrant's own
``score_threshold`` on the first stage belongs in a ``Prefetch``.

A ``Prefetch`` without a ``limit`` returns 10 points, on a server and in local mode alike (qdrant-client
``http/models/models.py`` ``Prefetch.limit``: "Default is 10"; ``local/local_collection.py`` fills 10). So
two such prefetches fused with a window of 50 would rerank at most 20 points. Here every ``Prefetch``
without a limit, nested ones included, is sent with ``limit = window`` (on copies: the caller's objects are
not changed); a prefetch with its own limit keeps it, and when the first stage then returns fewer
candidates than the window while those limits add up to less than it, a warning says so.

Importing this module without ``qdrant-client`` raises an ImportError naming
``pip install 'lychee-rerank[qdrant]'``.

Example:
    >>> from qdrant_client import QdrantClient, models  # doctest: +SKIP
    >>> client = QdrantClient(":memory:")  # doctest: +SKIP
    >>> reranker = QdrantReranker(client, "http://gpu-box:8000", text_fields=["title"])  # doctest: +SKIP
    >>> response = reranker.query_points(  # doctest: +SKIP
    ...     "products",
    ...     rerank_query="white linen shirt",
    ...     prefetch=[models.Prefetch(query=dense, using="dense"), models.Prefetch(query=sparse, using="sparse")],
    ...     query=models.FusionQuery(fusion=models.Fusion.RRF),
    ...     limit=3,  # the prefetches get limit=50 (the window) each: they have none of their own
    ... )
    >>> [(p.id, round(p.score, 2), p.payload["_first_stage_score"]) for p in response.points]  # doctest: +SKIP
    [(7, 0.93, 0.5), (2, 0.88, 0.33), (11, 0.41, 1.0)]
"""

from __future__ import annotations

import copy
import logging
import math
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from lychee_rerank.core.extras import require

require("qdrant_client", "qdrant")

from qdrant_client import AsyncQdrantClient, QdrantClient, models  # noqa: E402

# `qdrant_client.models.QueryResponse` is fastembed's type of the same name; query_points returns this one.
from qdrant_client.http.models import QueryResponse  # noqa: E402

from lychee_rerank.adapters._second_stage import IMAGE_KEYS, SecondStage, Selection, document_from_fields  # noqa: E402
from lychee_rerank.core.errors import InvalidInputError  # noqa: E402
from lychee_rerank.core.inputs import Document, Query, QueryLike, as_query  # noqa: E402
from lychee_rerank.core.interface import Reranker  # noqa: E402
from lychee_rerank.core.remote import as_reranker  # noqa: E402

__all__ = [
    "DEFAULT_WINDOW",
    "FIRST_STAGE_SCORE_KEY",
    "RERANK_ERROR_KEY",
    "RERANK_FAILED_KEY",
    "AsyncQdrantReranker",
    "QdrantReranker",
]

logger = logging.getLogger(__name__)

FIRST_STAGE_SCORE_KEY = "_first_stage_score"
"""Payload key of the score Qdrant gave a point before reranking (fusion, cosine...)."""

RERANK_FAILED_KEY = "_rerank_failed"
"""Payload key set to ``True`` on points returned in first-stage order because reranking failed."""

RERANK_ERROR_KEY = "_rerank_error"
"""Payload key holding why reranking failed (``"Type: message"``) on those points."""

DEFAULT_WINDOW = 50
"""Candidates fetched from Qdrant and reranked per query, unless the constructor or a call says otherwise."""

PayloadSelection = bool | Sequence[str] | models.PayloadSelectorInclude | models.PayloadSelectorExclude
"""What ``with_payload`` accepts here: Qdrant's REST forms (gRPC selectors are not supported)."""

_SEGMENT = re.compile(r"^(?P<key>[^\[\]]+)(?P<index>\[\d*\])?$")


@dataclass(frozen=True)
class _PayloadPlan:
    """What to ask Qdrant for, and what to remove again before the caller sees the payload."""

    fetch: bool | list[str] | models.PayloadSelectorInclude | models.PayloadSelectorExclude
    remove: tuple[str, ...]
    keep: bool  # False: the caller asked for no payload


def _roots(path: str) -> list[str]:
    # "meta[].image" and "meta.image" name the same place for the purpose of overlap.
    return [re.sub(r"\[\d*\]$", "", segment) for segment in path.split(".")]


def _overlap(left: str, right: str) -> bool:
    """Whether one payload path lies inside the other (or they are the same)."""
    a, b = _roots(left), _roots(right)
    shorter = min(len(a), len(b))
    return a[:shorter] == b[:shorter]


def _plan_payload(asked: PayloadSelection, needed: Sequence[str]) -> _PayloadPlan:
    if asked is True:
        return _PayloadPlan(True, (), True)
    if asked is False:
        return _PayloadPlan(models.PayloadSelectorInclude(include=list(needed)), (), False)
    if isinstance(asked, models.PayloadSelectorExclude):
        # An excluded key that holds (or sits inside) a field the reranker reads is fetched anyway and
        # removed afterwards, so the caller still does not see it.
        restored = tuple(key for key in asked.exclude if any(_overlap(key, field) for field in needed))
        rest = [key for key in asked.exclude if key not in restored]
        return _PayloadPlan(models.PayloadSelectorExclude(exclude=rest) if rest else True, restored, True)
    if isinstance(asked, models.PayloadSelectorInclude):
        keys = list(asked.include)
    elif isinstance(asked, Sequence) and not isinstance(asked, str) and all(isinstance(k, str) for k in asked):
        keys = list(asked)
    else:
        raise TypeError(
            "with_payload must be True, False, a list of payload keys, PayloadSelectorInclude or "
            f"PayloadSelectorExclude, got {type(asked).__name__}"
        )
    extra = tuple(field for field in needed if not any(_overlap(field, key) for key in keys))
    return _PayloadPlan(models.PayloadSelectorInclude(include=keys + list(extra)), extra, True)


def _delete(value: Any, segments: Sequence[str]) -> None:
    if not segments:
        return
    match = _SEGMENT.match(segments[0])
    if match is None or not isinstance(value, dict) or match["key"] not in value:
        return
    key, index = match["key"], match["index"]
    if index is None:
        if len(segments) == 1:
            del value[key]
        else:
            _delete(value[key], segments[1:])
        return
    items = value[key]
    if not isinstance(items, list):
        return
    if len(segments) == 1:  # "tags[]" or "tags[2]" names list elements themselves
        value[key] = [] if index == "[]" else [item for n, item in enumerate(items) if n != int(index[1:-1])]
        return
    chosen = items if index == "[]" else items[int(index[1:-1]) : int(index[1:-1]) + 1]
    for item in chosen:
        _delete(item, segments[1:])


def _lookup(payload: Mapping[str, Any], path: str) -> Any:
    # A literal key wins (Qdrant allows dots in keys); otherwise the dots walk into nested objects.
    if path in payload:
        return payload[path]
    value: Any = payload
    for segment in path.split("."):
        if not isinstance(value, Mapping) or segment not in value:
            return None
        value = value[segment]
    return value


def _text(value: Any, point_id: Any, field: str) -> str | None:
    if value is None:
        return None
    if isinstance(value, str):
        return value
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return str(value)
    if isinstance(value, list) and all(isinstance(item, str) for item in value):
        return "\n".join(value)
    raise InvalidInputError(
        f"point {point_id!r}: payload field {field!r} holds {type(value).__name__}; a text field must hold a "
        "string, a number or a list of strings"
    )


def _check_count(name: str, value: object, minimum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise InvalidInputError(f"{name} must be an integer >= {minimum}, got {value!r}")
    return value


def _check_fields(name: str, fields: Sequence[str]) -> tuple[str, ...]:
    if isinstance(fields, str):
        raise InvalidInputError(f"{name} must be a list of payload keys, not a single string: use [{fields!r}]")
    checked = tuple(fields)
    for field in checked:
        if not isinstance(field, str) or not field or "[" in field:
            raise InvalidInputError(f"{name}: {field!r} is not a payload key (plain or dotted, no [] indexing)")
    return checked


def _with_window(prefetch: Any, window: int) -> Any:
    """``prefetch`` (one, a list, nested) with ``limit = window`` wherever it has none; new objects only."""
    if isinstance(prefetch, list):
        return [_with_window(item, window) for item in prefetch]
    if isinstance(prefetch, models.Prefetch):
        update: dict[str, Any] = {}
        if prefetch.limit is None:
            update["limit"] = window
        if prefetch.prefetch is not None:
            update["prefetch"] = _with_window(prefetch.prefetch, window)
        return prefetch.model_copy(update=update) if update else prefetch
    if isinstance(prefetch, Mapping):
        copied = dict(prefetch)
        if copied.get("limit") is None:
            copied["limit"] = window
        if copied.get("prefetch") is not None:
            copied["prefetch"] = _with_window(copied["prefetch"], window)
        return copied
    return prefetch


def _explicit_limits(prefetch: Any) -> list[int]:
    """The limits the caller set on the top-level prefetches (what caps a fusion's candidates)."""
    items = prefetch if isinstance(prefetch, list) else [prefetch]
    limits = [item.limit if isinstance(item, models.Prefetch) else item.get("limit") for item in items if item]
    return [limit for limit in limits if isinstance(limit, int)]


@dataclass(frozen=True)
class _Request:
    """One call, prepared: the ``query_points`` arguments and how to turn its answer into the result."""

    query: Query
    arguments: dict[str, Any]
    payload: _PayloadPlan
    stage: SecondStage
    offset: int
    limit: int
    capped_by: tuple[int, ...] = ()  # the caller's own prefetch limits, when they add up to less than the window


class _QdrantRerankBase:
    """What the sync and async rerankers share: settings, request building, documents and the result."""

    _client_type: type
    _other_class: str

    def __init__(
        self,
        client: Any,
        reranker: Reranker | str,
        *,
        text_fields: Sequence[str] = ("text",),
        image_fields: Sequence[str] = IMAGE_KEYS,
        window: int = DEFAULT_WINDOW,
        instruction: str | None = None,
        fail_open: bool = True,
        timeout_s: float | None = None,
        first_stage_score_key: str | None = FIRST_STAGE_SCORE_KEY,
    ) -> None:
        if not isinstance(client, self._client_type):
            raise TypeError(
                f"expected a {self._client_type.__name__}, got {type(client).__name__} (use {self._other_class})"
            )
        self.client = client
        self.reranker = as_reranker(reranker)
        self.text_fields = _check_fields("text_fields", text_fields)
        self.image_fields = _check_fields("image_fields", image_fields)
        if not self.text_fields and not self.image_fields:
            raise InvalidInputError("give at least one of text_fields and image_fields: there is nothing to rerank by")
        self.window = _check_count("window", window, 1)
        self.instruction = instruction
        self.fail_open = fail_open
        if timeout_s is not None and not timeout_s > 0:
            raise InvalidInputError(f"timeout_s must be > 0 or None, got {timeout_s!r}")
        self.timeout_s = timeout_s
        self.first_stage_score_key = first_stage_score_key

    def _request(
        self,
        collection_name: str,
        rerank_query: QueryLike,
        *,
        limit: int,
        offset: int | None,
        score_threshold: float | None,
        window: int | None,
        with_payload: PayloadSelection,
        instruction: str | None,
        qdrant_arguments: Mapping[str, Any],
    ) -> _Request:
        limit = _check_count("limit", limit, 0)
        offset = _check_count("offset", 0 if offset is None else offset, 0)
        window = self.window if window is None else _check_count("window", window, 1)
        if score_threshold is not None and (
            isinstance(score_threshold, bool)
            or not isinstance(score_threshold, (int, float))
            or math.isnan(score_threshold)
        ):
            raise InvalidInputError(f"score_threshold must be a number or None, got {score_threshold!r}")
        payload = _plan_payload(with_payload, self.text_fields + self.image_fields)
        # A window smaller than the page would return short pages for no reason.
        window = max(window, limit)
        arguments = {
            **qdrant_arguments,
            "collection_name": collection_name,
            "limit": window,
            "with_payload": payload.fetch,
        }
        capped_by: tuple[int, ...] = ()
        if qdrant_arguments.get("prefetch") is not None:
            # Prefetch.limit defaults to 10 in Qdrant: without this the window would be 10 per prefetch.
            arguments["prefetch"] = _with_window(qdrant_arguments["prefetch"], window)
            explicit = _explicit_limits(qdrant_arguments["prefetch"])
            items = qdrant_arguments["prefetch"]
            if explicit and len(explicit) == len(items if isinstance(items, list) else [items]):
                capped_by = tuple(explicit) if sum(explicit) < window else ()
        stage = SecondStage(
            self.reranker,
            top_n=None,  # offset/limit are applied after the threshold, on the whole reranked window
            score_threshold=score_threshold,
            instruction=self.instruction if instruction is None else instruction,
            fail_open=self.fail_open,
            timeout_s=self.timeout_s,
        )
        return _Request(as_query(rerank_query), arguments, payload, stage, offset, limit, capped_by)

    def _check_window(self, request: _Request, points: Sequence[models.ScoredPoint]) -> None:
        window = request.arguments["limit"]
        if request.capped_by and len(points) < window:
            logger.warning(
                "the first stage returned %d candidates for a window of %d: the prefetch limits %s cap it; "
                "raise them (or leave them out: a prefetch without a limit gets the window)",
                len(points),
                window,
                list(request.capped_by),
            )

    def _documents(self, points: Sequence[models.ScoredPoint]) -> list[Document]:
        documents = []
        empty = 0
        for point in points:
            payload = point.payload or {}
            texts = [_text(_lookup(payload, field), point.id, field) for field in self.text_fields]
            text = "\n".join(t for t in texts if t is not None and t.strip())
            images = {field: _lookup(payload, field) for field in self.image_fields}
            try:
                document = document_from_fields(text, images, self.image_fields)
            except InvalidInputError as error:
                raise InvalidInputError(f"point {point.id!r}: {error}") from None
            empty += document.text == "" and document.image is None
            documents.append(document)
        if empty:
            # Usually a misnamed field: say so instead of silently ranking empty documents last.
            logger.warning(
                "%d of %d points have none of the payload fields %s; they are reranked as empty documents",
                empty,
                len(points),
                list(self.text_fields + self.image_fields),
            )
        return documents

    def _response(self, request: _Request, points: Sequence[models.ScoredPoint], selection: Selection) -> QueryResponse:
        page = selection.picks[request.offset : request.offset + request.limit]
        return QueryResponse(points=[self._copy(request, points[pick.index], pick.score, selection) for pick in page])

    def _copy(
        self, request: _Request, point: models.ScoredPoint, rerank_score: float | None, selection: Selection
    ) -> models.ScoredPoint:
        payload: dict[str, Any] | None = None
        if request.payload.keep:
            payload = copy.deepcopy(point.payload) if point.payload is not None else {}
            for path in request.payload.remove:
                _delete(payload, path.split("."))
        marks: dict[str, Any] = {}
        if self.first_stage_score_key is not None:
            marks[self.first_stage_score_key] = point.score
        if selection.failed:
            marks[RERANK_FAILED_KEY] = True
            marks[RERANK_ERROR_KEY] = selection.error
        if marks:
            payload = {**(payload or {}), **marks}
        return point.model_copy(
            update={"score": point.score if rerank_score is None else rerank_score, "payload": payload}
        )


class QdrantReranker(_QdrantRerankBase):
    """Runs ``QdrantClient.query_points`` and reranks the window by payload text and images.

    Args:
        client: A ``QdrantClient`` (``":memory:"``, ``path=`` or a server URL).
        reranker: A :class:`~lychee_rerank.core.Reranker` or the URL of a ``lychee-rerank serve`` service.
        text_fields: Payload keys (dotted for nested objects) whose values, joined by newlines, are the
            document's text.
        image_fields: Payload keys that may hold the document's image (a path, an http(s) URL, a data URI or
            base64); the first non-empty one is used.
        window: Candidates fetched and reranked per query (at least ``limit``); a call may override it.
            Prefetches without a ``limit`` of their own are given the window (Qdrant's default is 10).
        instruction: The task instruction, or a preset name (``"ecommerce"``, ``"academic"``...).
        fail_open: On a reranker failure, return the first-stage order, flagged and logged, instead of raising.
        timeout_s: Seconds the reranking may take before the call counts as failed; ``None`` waits. A
            ``RemoteReranker`` keeps it itself, sync and async, with no extra thread.
        first_stage_score_key: Payload key that receives the first-stage score; ``None`` leaves it out.

    Example:
        >>> client = QdrantClient(":memory:")  # doctest: +SKIP
        >>> reranker = QdrantReranker(client, LocalReranker(), text_fields=["caption"])  # doctest: +SKIP
        >>> reranker.query_points("figures", rerank_query="ImageNet accuracy", query=dense, limit=2)  # doctest: +SKIP
        QueryResponse(points=[ScoredPoint(id=3, score=0.91, ...), ScoredPoint(id=8, score=0.47, ...)])
    """

    _client_type = QdrantClient
    _other_class = "AsyncQdrantReranker for an AsyncQdrantClient"
    client: QdrantClient

    def query_points(
        self,
        collection_name: str,
        rerank_query: QueryLike,
        *,
        limit: int = 10,
        offset: int | None = None,
        score_threshold: float | None = None,
        with_payload: PayloadSelection = True,
        window: int | None = None,
        instruction: str | None = None,
        **qdrant_arguments: Any,
    ) -> QueryResponse:
        """The best ``limit`` points after ``offset``, reranked, as a ``QueryResponse``.

        Args:
            collection_name: The collection to search.
            rerank_query: What the reranker judges against: text, a :class:`~lychee_rerank.core.Query`,
                a ``{"text", "image"}`` mapping or a PIL image.
            limit: Points to return after reranking.
            offset: Reranked points to skip (pages inside the window).
            score_threshold: Drop points whose rerank score is below it (``>=`` is kept).
            with_payload: As in Qdrant; fields fetched only for reranking are removed again.
            window: This call's window; default: the constructor's.
            instruction: This call's instruction; default: the constructor's.
            **qdrant_arguments: Passed to ``query_points``: ``query``, ``using``, ``prefetch`` (each
                ``Prefetch`` without a ``limit`` gets the window, on a copy), ``query_filter``,
                ``search_params``, ``with_vectors``, ``lookup_from``, ``timeout``...

        Raises:
            InvalidInputError: A bad argument, or a payload that cannot be scored (always, even fail-open).
        """
        request = self._request(
            collection_name,
            rerank_query,
            limit=limit,
            offset=offset,
            score_threshold=score_threshold,
            window=window,
            with_payload=with_payload,
            instruction=instruction,
            qdrant_arguments=qdrant_arguments,
        )
        points = self.client.query_points(**request.arguments).points
        self._check_window(request, points)
        selection = request.stage.run(request.query, self._documents(points))
        return self._response(request, points, selection)


class AsyncQdrantReranker(_QdrantRerankBase):
    """:class:`QdrantReranker` for ``AsyncQdrantClient``: the same arguments, ``await query_points(...)``.

    The reranker is called through ``arerank``, so the event loop keeps running while it scores.

    Example:
        >>> reranker = AsyncQdrantReranker(AsyncQdrantClient(":memory:"), "http://gpu-box:8000")  # doctest: +SKIP
        >>> response = await reranker.query_points("docs", rerank_query="red dress", query=vector)  # doctest: +SKIP
    """

    _client_type = AsyncQdrantClient
    _other_class = "QdrantReranker for a QdrantClient"
    client: AsyncQdrantClient

    async def query_points(
        self,
        collection_name: str,
        rerank_query: QueryLike,
        *,
        limit: int = 10,
        offset: int | None = None,
        score_threshold: float | None = None,
        with_payload: PayloadSelection = True,
        window: int | None = None,
        instruction: str | None = None,
        **qdrant_arguments: Any,
    ) -> QueryResponse:
        """:meth:`QdrantReranker.query_points`, awaiting the client and the reranker."""
        request = self._request(
            collection_name,
            rerank_query,
            limit=limit,
            offset=offset,
            score_threshold=score_threshold,
            window=window,
            with_payload=with_payload,
            instruction=instruction,
            qdrant_arguments=qdrant_arguments,
        )
        points = (await self.client.query_points(**request.arguments)).points
        self._check_window(request, points)
        selection = await request.stage.arun(request.query, self._documents(points))
        return self._response(request, points, selection)
