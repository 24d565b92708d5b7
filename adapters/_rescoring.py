"""Client-side rescoring of search hits, as Elasticsearch's query rescorer combines scores.

Engine-agnostic: it works on plain dict search requests and responses, so the Elasticsearch and
OpenSearch adapters share it (adapters never import each other). The user writes an ordinary search
request; :class:`HitRescorer` turns it into the request actually sent (``size`` grown to the window,
``from`` dropped, ``_source`` widened to the rerank fields), scores the window's hits with a
:class:`~lychee_rerank.core.Reranker`, and rewrites the response.

Combination, per hit in the window, exactly as Elasticsearch's ``query`` rescorer::

    a = original_score * query_weight
    b = rerank_score * rerank_weight
    total: a + b    multiply: a * b    avg: (a + b) / 2    max: max(a, b)    min: min(a, b)

Hits past the window score ``a`` (their first-stage score times ``query_weight``) and then *all* hits are
sorted together by score, as Elasticsearch's ``QueryRescorer.combine`` does (elastic/elasticsearch
``server/.../search/rescore/QueryRescorer.java``). So a hit past the window can overtake a reranked one:
with ``avg``, ``min``, ``multiply``, a ``rerank_weight`` below 1 or a negative weight the order is not
"window first". ``keep_window_on_top=True`` keeps the reranked window, sorted, ahead of the rest (in
first-stage order), which Elasticsearch has no option for. Ties keep the first-stage order (Elasticsearch
breaks them by Lucene doc id, which a client cannot see). ``from``/``size`` then page over that list, and
``hits.max_score`` is the best combined score.

Elasticsearch's ``window_size`` is *per shard*: each shard rescores its own top ``window_size`` before the
coordinating node merges them, so on a 5-shard index ``window_size: 50`` rescores up to 250 hits (and the
merged top 50 may hold fewer than 50 rescored ones, or more). Here the window is *global*: the top
``window_size`` hits of the merged response are reranked, exactly that many, whatever the shard count. To
rerank as many hits as native ``rescore`` would on N shards, use ``window_size * N`` (N times the cost).

The request sent asks for ``max(window_size, from + size)`` hits from 0 (``size`` 0 stays 0: nothing to
rerank). ``window_size`` defaults to 10, Elasticsearch's default, and is not grown with ``from + size``: a
fixed window keeps page 2 consistent with page 1; a page past the window holds hits scored ``original *
query_weight`` (with reranked hits that sank there, Elasticsearch's order).

What the rewritten response holds (the keys are also module constants):

- ``hits.hits[i]["_score"]``: the combined score.
- ``hits.hits[i]["_lychee"]`` (:data:`HIT_KEY`): ``{"original_score": float, "rerank_score": float | None}``;
  ``rerank_score`` is ``None`` past the window and when reranking failed.
- ``response["lychee"]`` (:data:`RESPONSE_KEY`): ``{"reranked": bool, "error": str | None,
  "window_size": int}``. ``reranked`` is ``False`` only when the reranker failed and ``fail_open`` kept
  the first-stage order; then every ``_score`` is the untouched original score and ``error`` says why.

Fail-open follows :mod:`lychee_rerank.adapters._second_stage`: a reranker that is down, erroring, past
``timeout_s`` or refusing the API key gives the first-stage order with ``response["lychee"]["error"]``
saying why (``"RemoteAuthError: ..."``), logged as a warning (an error for a refused API key); an
:class:`InvalidInputError` (an image field that holds no image, say) always raises, as do all errors when
``fail_open=False``.
"""

from __future__ import annotations

import inspect
import math
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Generic, Literal, TypeVar, get_args

from lychee_rerank.adapters._second_stage import SecondStage, Selection, document_from_fields, query_from_fields
from lychee_rerank.adapters._source_filter import SourceFilter, field_patterns, lookup, refuse_unknown
from lychee_rerank.core.errors import InvalidInputError
from lychee_rerank.core.inputs import Document, ImageInput, Query
from lychee_rerank.core.interface import Reranker
from lychee_rerank.core.remote import as_reranker

__all__ = [
    "DEFAULT_WINDOW_SIZE",
    "HIT_KEY",
    "RESPONSE_KEY",
    "SCORE_MODES",
    "SORT_ERROR",
    "AsyncClientRescorer",
    "ClientRescorer",
    "Combination",
    "HitRescorer",
    "ScoreMode",
    "SearchPlan",
    "combine",
    "finish",
    "query_text_from",
    "response_body",
]

ScoreMode = Literal["total", "multiply", "avg", "max", "min"]
SCORE_MODES: tuple[str, ...] = get_args(ScoreMode)
"""The score modes of Elasticsearch's query rescorer, the first being the default."""

HIT_KEY = "_lychee"
"""Key on each returned hit: ``{"original_score": ..., "rerank_score": ...}``."""

RESPONSE_KEY = "lychee"
"""Top-level response key: ``{"reranked": ..., "error": ..., "window_size": ...}``."""

DEFAULT_WINDOW_SIZE = 10
"""Elasticsearch's default ``window_size``; a fixed window keeps pages consistent with each other."""

SORT_ERROR = "Cannot use [sort] option in conjunction with [rescore]."
"""Elasticsearch's own message for a sort other than ``_score`` beside a rescore."""

DEFAULT_SIZE = 10  # Elasticsearch's and OpenSearch's default page size
_TEXT_QUERY_BY_FIELD = ("match", "match_phrase", "match_phrase_prefix", "match_bool_prefix")
_TEXT_QUERY_DIRECT = ("multi_match", "query_string", "simple_query_string", "combined_fields")
_PLACEHOLDER = re.compile(r"\{([^{}]+)\}")


def _number(value: object, name: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise InvalidInputError(f"{name} must be a finite number, got {value!r}")
    return float(value)


def _count(value: object, name: str, minimum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise InvalidInputError(f"{name} must be an integer >= {minimum}, got {value!r}")
    return value


def combine(original: float, rerank: float, *, query_weight: float, rerank_weight: float, score_mode: str) -> float:
    """Elasticsearch's query-rescorer combination of a first-stage and a rerank score.

    Example:
        >>> combine(2.0, 0.5, query_weight=0.5, rerank_weight=4.0, score_mode="total")
        3.0
        >>> combine(2.0, 0.5, query_weight=0.5, rerank_weight=4.0, score_mode="multiply")
        2.0
    """
    first, second = original * query_weight, rerank * rerank_weight
    if score_mode == "total":
        return first + second
    if score_mode == "multiply":
        return first * second
    if score_mode == "avg":
        return (first + second) / 2
    if score_mode == "max":
        return max(first, second)
    if score_mode == "min":
        return min(first, second)
    raise InvalidInputError(f"score_mode must be one of {', '.join(SCORE_MODES)}; got {score_mode!r}")


@dataclass(frozen=True)
class Combination:
    """How many hits are reranked and how their scores are combined; validated on construction.

    ``window_size`` is global (the top hits of the merged response), not per shard as in Elasticsearch;
    ``keep_window_on_top`` departs from Elasticsearch, which sorts every hit together (see the module docs).

    Example:
        >>> Combination(window_size=50, query_weight=0.2).combine(10.0, 0.5)
        2.5
    """

    window_size: int = DEFAULT_WINDOW_SIZE
    query_weight: float = 1.0
    rerank_weight: float = 1.0
    score_mode: ScoreMode = "total"
    keep_window_on_top: bool = False

    def __post_init__(self) -> None:
        _count(self.window_size, "window_size", 1)
        if not isinstance(self.keep_window_on_top, bool):
            raise InvalidInputError(f"keep_window_on_top must be true or false, got {self.keep_window_on_top!r}")
        _number(self.query_weight, "query_weight")
        _number(self.rerank_weight, "rerank_weight")
        if self.score_mode not in SCORE_MODES:
            raise InvalidInputError(f"score_mode must be one of {', '.join(SCORE_MODES)}; got {self.score_mode!r}")

    def combine(self, original: float, rerank: float) -> float:
        """The combined score of a hit inside the window."""
        return combine(
            original,
            rerank,
            query_weight=self.query_weight,
            rerank_weight=self.rerank_weight,
            score_mode=self.score_mode,
        )

    def with_block(self, block: Mapping[str, Any]) -> Combination:
        """This combination overridden by an Elasticsearch-style rescore entry.

        Example:
            >>> Combination().with_block({"window_size": 50, "lychee": {"query_weight": 0.2}}).query_weight
            0.2
        """
        refuse_unknown(block, ("window_size", "lychee"), "a lychee rescore entry")
        options = block["lychee"]
        if not isinstance(options, Mapping):
            raise InvalidInputError(f"rescore 'lychee' must be an object, got {type(options).__name__}")
        refuse_unknown(
            options, ("query_weight", "rerank_weight", "score_mode", "keep_window_on_top"), "rescore 'lychee'"
        )
        return Combination(
            window_size=block.get("window_size", self.window_size),
            query_weight=options.get("query_weight", self.query_weight),
            rerank_weight=options.get("rerank_weight", self.rerank_weight),
            score_mode=options.get("score_mode", self.score_mode),
            keep_window_on_top=options.get("keep_window_on_top", self.keep_window_on_top),
        )


def _as_text(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, list):
        return "\n".join(text for text in (_as_text(item) for item in value) if text)
    return str(value)


def query_text_from(query: object) -> str | None:
    """The text of a simple full-text query, or ``None`` when there is none or more than one.

    Simple means a ``match``-family, ``multi_match``, ``query_string``, ``simple_query_string`` or
    ``combined_fields`` query, at the top or among the ``must``/``should`` clauses of a ``bool``, with
    one distinct text among them.

    Example:
        >>> query_text_from({"bool": {"must": [{"match": {"title": {"query": "red dress"}}}], "filter": []}})
        'red dress'
    """
    texts = _query_texts(query)
    return texts.pop() if len(texts) == 1 else None


def _query_texts(query: object) -> set[str]:
    if not isinstance(query, Mapping) or len(query) != 1:
        return set()
    ((kind, spec),) = query.items()
    if not isinstance(spec, Mapping):
        return set()
    if kind in _TEXT_QUERY_DIRECT:
        return {spec["query"]} if isinstance(spec.get("query"), str) else set()
    if kind in _TEXT_QUERY_BY_FIELD:
        fields = [value for key, value in spec.items() if key not in ("boost", "_name")]
        if len(fields) != 1:
            return set()
        value = fields[0].get("query") if isinstance(fields[0], Mapping) else fields[0]
        return {value} if isinstance(value, str) else set()
    if kind == "bool":
        texts: set[str] = set()
        for occur in ("must", "should"):
            clauses = spec.get(occur, [])
            for clause in [clauses] if isinstance(clauses, Mapping) else clauses:
                texts |= _query_texts(clause)
        return texts
    return set()


def _check_sort(sort: object) -> None:
    for item in sort if isinstance(sort, list) else [sort]:
        if item == "_score":
            continue
        if isinstance(item, Mapping) and list(item) == ["_score"]:
            order = item["_score"]
            order = order.get("order", "desc") if isinstance(order, Mapping) else order
            if order == "desc":
                continue
        raise InvalidInputError(SORT_ERROR)


@dataclass(frozen=True)
class SearchPlan:
    """One search: the body to send and what is needed to rewrite its response.

    Attributes:
        body: The request body to send (a new dict; the caller's is never changed).
        combination: Window and combination for this search.
        query: What the hits are reranked against.
        from_: The first hit of the page, in the rescored list.
        size: The page size.
        source_filter: The user's ``_source`` filter, applied to the returned hits when the adapter had to
            fetch more than it lets through; ``None`` when hits come back as the user asked.
    """

    body: dict[str, Any]
    combination: Combination
    query: Query | None
    from_: int
    size: int
    source_filter: SourceFilter | None = None


@dataclass(frozen=True)
class HitRescorer:
    """Plans a search request and rescores its response with a reranker; knows no search engine.

    Args:
        reranker: A :class:`~lychee_rerank.core.Reranker`, or the URL of a ``lychee-rerank serve`` service.
        text_fields: ``_source`` fields (dotted paths allowed) making a hit's text.
        text_template: How the text fields are joined, with ``{field}`` placeholders, e.g.
            ``"{title}\\n{body}"``; default: the non-empty fields, one per line.
        image_field: A ``_source`` field holding the hit's image as a URL, path, data URI or base64.
        combination: Default window and combination; a request's rescore entry overrides it per search.
        instruction: The task instruction or a preset name; ``None`` means the profile's default.
        fail_open: On a reranker failure or timeout, return the first-stage order flagged in the response
            (and logged) instead of raising.
        timeout_s: Seconds the reranking may take; ``None`` waits. A ``RemoteReranker`` keeps it itself,
            sync and async, with no extra thread.

    Example:
        >>> rescorer = HitRescorer(reranker, text_fields=("title",))  # doctest: +SKIP
        >>> plan = rescorer.plan({"query": {"match": {"title": "red dress"}}, "size": 3})  # doctest: +SKIP
        >>> plan.body  # doctest: +SKIP
        {'query': {'match': {'title': 'red dress'}}, 'size': 10}
        >>> rescorer.rescore(response_to(plan.body), plan)["hits"]["hits"][0]["_lychee"]  # doctest: +SKIP
        {'original_score': 1.3, 'rerank_score': 0.92}
    """

    reranker: Reranker | str
    text_fields: tuple[str, ...] = ("title", "body")
    text_template: str | None = None
    image_field: str | None = None
    combination: Combination = field(default_factory=Combination)
    instruction: str | None = None
    fail_open: bool = True
    timeout_s: float | None = None
    stage: SecondStage = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        reranker = as_reranker(self.reranker)
        object.__setattr__(self, "reranker", reranker)
        fields = field_patterns(self.text_fields, "text_fields")
        object.__setattr__(self, "text_fields", fields)
        if not fields and self.image_field is None:
            raise InvalidInputError("give text_fields, an image_field, or both: there is nothing to rerank by")
        if self.text_template is not None:
            unknown = [name for name in _PLACEHOLDER.findall(self.text_template) if name not in fields]
            if unknown:
                raise InvalidInputError(f"text_template names {unknown}, which are not in text_fields {list(fields)}")
        if self.timeout_s is not None and _number(self.timeout_s, "timeout_s") <= 0:
            raise InvalidInputError(f"timeout_s must be positive or None, got {self.timeout_s!r}")
        # The fail-open rule, deadline and logging are the framework adapters' own (adapters._second_stage).
        stage = SecondStage(reranker, instruction=self.instruction, fail_open=self.fail_open, timeout_s=self.timeout_s)
        object.__setattr__(self, "stage", stage)

    @property
    def source_paths(self) -> tuple[str, ...]:
        """The ``_source`` fields the adapter needs for every hit in the window."""
        return self.text_fields + ((self.image_field,) if self.image_field else ())

    def plan(
        self,
        body: Mapping[str, Any] | None = None,
        *,
        source_includes: str | Sequence[str] | None = None,
        source_excludes: str | Sequence[str] | None = None,
        rerank_query: str | None = None,
        rerank_query_image: ImageInput | None = None,
    ) -> SearchPlan:
        """The request to send for the user's search ``body``, and how to rewrite its response.

        Args:
            body: The user's search body (``query``, ``size``, ``from``, ``_source``, ``rescore``, ``sort``...).
            source_includes: URL-style ``_source_includes`` (a list, or fields joined by commas).
            source_excludes: URL-style ``_source_excludes``.
            rerank_query: The text hits are reranked against; default: the text of a simple full-text query.
            rerank_query_image: An image that is part of the rerank query.

        Raises:
            InvalidInputError: A sort other than ``_score``, a bad rescore entry, ``from``/``size``, or no
                rerank query text that can be told from the request.
        """
        request = dict(body or {})
        combination = self.combination
        rescore = request.pop("rescore", None)
        entries = [] if rescore is None else [rescore] if isinstance(rescore, Mapping) else list(rescore)
        ours = [entry for entry in entries if isinstance(entry, Mapping) and "lychee" in entry]
        if len(ours) > 1:
            raise InvalidInputError("give one lychee rescore entry per search, got several")
        if ours:
            combination = combination.with_block(ours[0])
        others = [entry for entry in entries if entry not in ours]
        if others:  # server-side rescorers (query, learning_to_rank) still run there, before ours
            request["rescore"] = others[0] if isinstance(rescore, Mapping) else others
        if request.get("sort") is not None:
            _check_sort(request["sort"])
        size = _count(request.pop("size", DEFAULT_SIZE), "size", 0)
        from_ = _count(request.pop("from", 0), "from", 0)
        source_filter = self._source_filter(request, source_includes, source_excludes)
        # An aggregation-only search (size 0) has nothing to rerank and should not fetch a window.
        request["size"] = 0 if size == 0 else max(combination.window_size, from_ + size)
        query = self._query(request.get("query"), rerank_query, rerank_query_image) if size else None
        return SearchPlan(request, combination, query, from_, size, source_filter)

    def _source_filter(
        self, request: dict[str, Any], includes: str | Sequence[str] | None, excludes: str | Sequence[str] | None
    ) -> SourceFilter | None:
        if includes is not None or excludes is not None:
            if "_source" in request:
                raise InvalidInputError("give the _source filter either in the body or as source_includes/excludes")
            request["_source"] = SourceFilter(
                includes=_url_patterns(includes, "source_includes"), excludes=_url_patterns(excludes, "source_excludes")
            ).to_request()
        if "_source" not in request:
            return None
        wanted = SourceFilter.parse(request["_source"])
        if all(wanted.keeps(path) for path in self.source_paths):
            return None
        request["_source"] = wanted.widened(self.source_paths).to_request()
        return wanted

    def _query(self, query: object, text: str | None, image: ImageInput | None) -> Query:
        if text is None:
            text = query_text_from(query)
        if text is None and image is None:
            raise InvalidInputError(
                "cannot tell the rerank query text from this query (it is not one simple match, multi_match or "
                "query_string); pass rerank_query='...' (and/or rerank_query_image=...)"
            )
        return query_from_fields(text, image)

    def documents(self, hits: Sequence[Mapping[str, Any]]) -> list[Document]:
        """The hits as documents: text from ``text_fields`` (through the template), image from ``image_field``."""
        return [self._document(hit.get("_source") or {}) for hit in hits]

    def _document(self, source: Mapping[str, Any]) -> Document:
        values = {name: _as_text(lookup(source, name)) for name in self.text_fields}
        if self.text_template is None:
            text = "\n".join(value for value in values.values() if value)
        else:
            text = _PLACEHOLDER.sub(lambda match: values[match.group(1)], self.text_template)
        if self.image_field is None:
            return document_from_fields(text)
        image = lookup(source, self.image_field)
        if isinstance(image, list):
            image = next((item for item in image if item), None)
        return document_from_fields(text, {self.image_field: image}, (self.image_field,))

    def rescore(self, response: Mapping[str, Any], plan: SearchPlan) -> dict[str, Any]:
        """The search response rewritten: window reranked and combined, paged, ``_source`` filtered, flagged."""
        documents = self.documents(_hits_of(response)[: plan.combination.window_size])
        selection = Selection(()) if plan.query is None else self.stage.run(plan.query, documents)
        return finish(response, plan, selection)

    async def arescore(self, response: Mapping[str, Any], plan: SearchPlan) -> dict[str, Any]:
        """:meth:`rescore` with the reranker's async methods, never blocking the event loop."""
        documents = self.documents(_hits_of(response)[: plan.combination.window_size])
        selection = Selection(()) if plan.query is None else await self.stage.arun(plan.query, documents)
        return finish(response, plan, selection)


def _url_patterns(value: str | Sequence[str] | None, where: str) -> tuple[str, ...]:
    if isinstance(value, str):  # URL parameters list fields joined by commas
        return tuple(part.strip() for part in value.split(",") if part.strip())
    return field_patterns(value, where)


def _hits_of(response: Mapping[str, Any]) -> list[Mapping[str, Any]]:
    hits = response.get("hits")
    if not isinstance(hits, Mapping) or not isinstance(hits.get("hits"), list):
        raise InvalidInputError("not a search response: it has no hits.hits list")
    return list(hits["hits"])


def finish(response: Mapping[str, Any], plan: SearchPlan, selection: Selection) -> dict[str, Any]:
    """Builds the user's response from the raw one and the reranker's picks (``selection``).

    The raw response is not changed; hits are new dicts.
    """
    hits = _hits_of(response)
    combination = plan.combination
    scores = {pick.index: pick.score for pick in selection.picks}
    rescored: list[dict[str, Any]] = []
    for index, hit in enumerate(hits):
        original = float(hit.get("_score") or 0.0)
        rerank = scores.get(index) if index < combination.window_size else None
        if selection.failed:
            combined = original  # first-stage order and scores, as if no rescore had been asked for
        elif rerank is None:
            combined = original * combination.query_weight
        else:
            combined = combination.combine(original, rerank)
        new_hit = {**hit, "_score": combined, HIT_KEY: {"original_score": original, "rerank_score": rerank}}
        if plan.source_filter is not None:
            _filter_hit_source(new_hit, plan.source_filter)
        rescored.append(new_hit)
    if not selection.failed:
        # sorted() is stable: equal combined scores keep the first-stage order.
        if combination.keep_window_on_top:
            window, rest = rescored[: combination.window_size], rescored[combination.window_size :]
            rescored = sorted(window, key=_by_score) + rest
        else:  # QueryRescorer.combine: the hits past the window are re-sorted with the rescored ones
            rescored = sorted(rescored, key=_by_score)
    hits_section = dict(response["hits"])
    if rescored and not selection.failed:
        hits_section["max_score"] = max(hit["_score"] for hit in rescored)
    hits_section["hits"] = rescored[plan.from_ : plan.from_ + plan.size]
    return {
        **response,
        "hits": hits_section,
        RESPONSE_KEY: {
            "reranked": not selection.failed,
            "error": selection.error,
            "window_size": combination.window_size,
        },
    }


def _by_score(hit: Mapping[str, Any]) -> float:
    return -float(hit["_score"])


def _filter_hit_source(hit: dict[str, Any], source_filter: SourceFilter) -> None:
    if "_source" not in hit:
        return
    if source_filter.enabled:
        hit["_source"] = source_filter.apply(hit["_source"])
    else:
        del hit["_source"]  # the engine leaves _source out of hits when it is turned off


def response_body(response: object) -> Mapping[str, Any]:
    """A client's search result as a mapping: a client response's ``.body``, or the mapping itself.

    elasticsearch-py 8.x and 9.x return an ``ObjectApiResponse`` (``.body`` is the dict); opensearch-py and
    older clients return the dict.
    """
    body = getattr(response, "body", response)
    if not isinstance(body, Mapping):
        raise TypeError(f"expected a search response (a mapping), got {type(body).__name__}")
    return body


ClientT = TypeVar("ClientT")


class _Rescorer(Generic[ClientT]):
    """What the sync and async client rescorers share: options, validation, planning."""

    def __init__(
        self,
        client: ClientT,
        reranker: Reranker | str,
        *,
        text_fields: Sequence[str] = ("title", "body"),
        text_template: str | None = None,
        image_field: str | None = None,
        window_size: int = DEFAULT_WINDOW_SIZE,
        query_weight: float = 1.0,
        rerank_weight: float = 1.0,
        score_mode: ScoreMode = "total",
        keep_window_on_top: bool = False,
        instruction: str | None = None,
        fail_open: bool = True,
        timeout_s: float | None = None,
    ) -> None:
        search = getattr(client, "search", None)
        if not callable(search):
            raise TypeError(f"expected a search client with a search() method, got {type(client).__name__}")
        self.client = client
        self.rescorer = HitRescorer(
            reranker,
            text_fields=tuple(text_fields) if not isinstance(text_fields, str) else (text_fields,),
            text_template=text_template,
            image_field=image_field,
            combination=Combination(window_size, query_weight, rerank_weight, score_mode, keep_window_on_top),
            instruction=instruction,
            fail_open=fail_open,
            timeout_s=timeout_s,
        )

    def _plan(
        self,
        body: Mapping[str, Any] | None,
        arguments: Mapping[str, Any],
        source_includes: str | Sequence[str] | None,
        source_excludes: str | Sequence[str] | None,
        rerank_query: str | None,
        rerank_query_image: ImageInput | None,
    ) -> SearchPlan:
        merged = dict(body or {})
        for key, value in arguments.items():
            if value is None:
                continue
            if key in merged:
                raise InvalidInputError(f"{key!r} is given both in body and as an argument; give it once")
            merged[key] = value
        return self.rescorer.plan(
            merged,
            source_includes=source_includes,
            source_excludes=source_excludes,
            rerank_query=rerank_query,
            rerank_query_image=rerank_query_image,
        )


class ClientRescorer(_Rescorer[ClientT]):
    """Client-side rescoring over any sync client whose ``search(index=, body=, **kwargs)`` returns a response.

    The Elasticsearch and OpenSearch adapters are this class with their client's name on it; see
    :class:`lychee_rerank.adapters.elasticsearch.ElasticsearchRescorer` for the arguments.
    """

    def search(
        self,
        *,
        index: str | Sequence[str] | None = None,
        body: Mapping[str, Any] | None = None,
        query: Mapping[str, Any] | None = None,
        size: int | None = None,
        from_: int | None = None,
        source: bool | str | Sequence[str] | Mapping[str, Any] | None = None,
        source_includes: str | Sequence[str] | None = None,
        source_excludes: str | Sequence[str] | None = None,
        sort: Any = None,
        rescore: Mapping[str, Any] | Sequence[Mapping[str, Any]] | None = None,
        rerank_query: str | None = None,
        rerank_query_image: ImageInput | None = None,
        **search_kwargs: Any,
    ) -> dict[str, Any]:
        """Runs the search, reranks its window and returns an ordinary search response (see module docs)."""
        arguments = {"query": query, "size": size, "from": from_, "_source": source, "sort": sort, "rescore": rescore}
        plan = self._plan(body, arguments, source_includes, source_excludes, rerank_query, rerank_query_image)
        client: Any = self.client
        response = client.search(index=index, body=plan.body, **search_kwargs)
        if inspect.isawaitable(response):
            if inspect.iscoroutine(response):
                response.close()  # never awaited: close it so Python does not warn about it
            raise TypeError(
                f"{type(self).__name__} got an async client ({type(client).__name__}); use its Async rescorer"
            )
        return self.rescorer.rescore(response_body(response), plan)


class AsyncClientRescorer(_Rescorer[ClientT]):
    """:class:`ClientRescorer` for an async client: ``await rescorer.search(...)``."""

    async def search(
        self,
        *,
        index: str | Sequence[str] | None = None,
        body: Mapping[str, Any] | None = None,
        query: Mapping[str, Any] | None = None,
        size: int | None = None,
        from_: int | None = None,
        source: bool | str | Sequence[str] | Mapping[str, Any] | None = None,
        source_includes: str | Sequence[str] | None = None,
        source_excludes: str | Sequence[str] | None = None,
        sort: Any = None,
        rescore: Mapping[str, Any] | Sequence[Mapping[str, Any]] | None = None,
        rerank_query: str | None = None,
        rerank_query_image: ImageInput | None = None,
        **search_kwargs: Any,
    ) -> dict[str, Any]:
        """Runs the search, reranks its window and returns an ordinary search response (see module docs)."""
        arguments = {"query": query, "size": size, "from": from_, "_source": source, "sort": sort, "rescore": rescore}
        plan = self._plan(body, arguments, source_includes, source_excludes, rerank_query, rerank_query_image)
        client: Any = self.client
        pending = client.search(index=index, body=plan.body, **search_kwargs)
        if not inspect.isawaitable(pending):
            raise TypeError(f"{type(self).__name__} got a sync client ({type(client).__name__}); use the sync rescorer")
        response = await pending
        return await self.rescorer.arescore(response_body(response), plan)
