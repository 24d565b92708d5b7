"""Elasticsearch: client-side rescoring of search hits with Lychee-Rerank-MM.

Elasticsearch's own ``rescore`` cannot call a neural model, so the rescorer runs the user's ordinary
search with ``size`` grown to the window, reranks the window's hits (text fields and an image field from
``_source``) and combines the scores exactly as Elasticsearch's ``query`` rescorer does. What comes back
is an ordinary search response (a ``dict``); the combination, the extra keys and the fail-open rule are
described in :mod:`lychee_rerank.adapters._rescoring`:

- ``hits.hits[i]["_score"]``: the combined score; ``hits.max_score`` follows it.
- ``hits.hits[i]["_lychee"]``: ``{"original_score": ..., "rerank_score": ...}`` (``None`` past the window).
- ``response["lychee"]``: ``{"reranked": bool, "error": str | None, "window_size": int}``.

Works with ``Elasticsearch`` and ``AsyncElasticsearch`` from elasticsearch-py 8.x and 9.x. Importing
this module without the client raises an ImportError naming ``pip install 'lychee-rerank[elasticsearch]'``.

Example:
    >>> from elasticsearch import Elasticsearch  # doctest: +SKIP
    >>> rescorer = ElasticsearchRescorer(  # doctest: +SKIP
    ...     Elasticsearch("http://localhost:9200"), "http://gpu-box:8000",
    ...     text_fields=("title", "description"), image_field="image_url", window_size=50,
    ... )
    >>> response = rescorer.search(  # doctest: +SKIP
    ...     index="products",
    ...     query={"match": {"title": "white linen shirt"}},
    ...     rescore={"window_size": 50, "lychee": {"query_weight": 0.2, "rerank_weight": 1.0}},
    ... )
    >>> response["hits"]["hits"][0]["_lychee"]  # doctest: +SKIP
    {'original_score': 7.31, 'rerank_score': 0.94}
"""

from __future__ import annotations

from lychee_rerank.core.extras import require

require("elasticsearch", "elasticsearch")

from elasticsearch import AsyncElasticsearch, Elasticsearch  # noqa: E402

from lychee_rerank.adapters._rescoring import (  # noqa: E402
    HIT_KEY,
    RESPONSE_KEY,
    SCORE_MODES,
    SORT_ERROR,
    AsyncClientRescorer,
    ClientRescorer,
)

__all__ = [
    "HIT_KEY",
    "RESPONSE_KEY",
    "SCORE_MODES",
    "SORT_ERROR",
    "AsyncElasticsearchRescorer",
    "ElasticsearchRescorer",
]


class ElasticsearchRescorer(ClientRescorer[Elasticsearch]):
    """Reranks the top hits of an Elasticsearch search, as a rescore Elasticsearch cannot run itself.

    Args:
        client: An ``elasticsearch.Elasticsearch`` client.
        reranker: A :class:`~lychee_rerank.core.Reranker` (``LocalReranker``, ``RemoteReranker``) or the URL
            of a ``lychee-rerank serve`` service.
        text_fields: ``_source`` fields (dotted paths allowed) that make a hit's text.
        text_template: How they are joined, e.g. ``"{title}\\n{body}"``; default: the non-empty ones, one
            per line. Placeholders must be among ``text_fields``.
        image_field: A ``_source`` field holding the hit's image as a URL, path, data URI or base64.
        window_size: How many top hits are reranked (default 10, as Elasticsearch's ``window_size``). Global,
            not per shard as Elasticsearch's: on a 5-shard index native ``rescore`` with ``window_size: 50``
            rescores up to 250 hits (50 per shard), this rescorer the merged top 50; pass 250 for as many.
            Fixed, not grown with ``from + size``, so that pages agree with each other.
        query_weight: Weight of the first-stage score; hits past the window score ``original * query_weight``
            and are sorted together with the reranked ones, as ``QueryRescorer.combine`` does.
        rerank_weight: Weight of the rerank score (a probability in [0, 1]).
        score_mode: ``"total"`` (default), ``"multiply"``, ``"avg"``, ``"max"`` or ``"min"``.
        keep_window_on_top: Keep the reranked window ahead of every hit past it (not Elasticsearch's
            behaviour, which may let a hit past the window overtake a reranked one).
        instruction: The task instruction or a preset name (``"ecommerce"``...); default: the model's.
        fail_open: On a reranker failure or timeout, return the first-stage order with
            ``response["lychee"]["reranked"] = False`` and a logged warning instead of raising.
        timeout_s: Seconds to wait for the reranker; ``None`` waits.

    ``search`` takes the body as ``body=`` or the usual keyword arguments (``query``, ``size``,
    ``from_``, ``source``, ``sort``, ``rescore``), plus ``source_includes``/``source_excludes``,
    ``rerank_query`` (the text to rerank against; default: the text of a simple ``match``,
    ``multi_match`` or ``query_string`` query), ``rerank_query_image``, and any other keyword argument of
    ``Elasticsearch.search``, passed through. A rescore entry ``{"window_size": N, "lychee": {"query_weight",
    "rerank_weight", "score_mode", "keep_window_on_top"}}`` overrides the defaults for one search; other rescore entries
    (``query``, ``learning_to_rank``) still run on the server, before this one. A ``sort`` other than
    ``_score`` is refused with Elasticsearch's own message.

    Example:
        >>> rescorer = ElasticsearchRescorer(es, reranker, text_fields=("title",), window_size=20)  # doctest: +SKIP
        >>> response = rescorer.search(index="docs", query={"match": {"title": "red dress"}}, size=5)  # doctest: +SKIP
        >>> [(hit["_id"], round(hit["_score"], 2)) for hit in response["hits"]["hits"][:2]]  # doctest: +SKIP
        [('17', 8.93), ('4', 8.41)]
    """


class AsyncElasticsearchRescorer(AsyncClientRescorer[AsyncElasticsearch]):
    """:class:`ElasticsearchRescorer` for ``AsyncElasticsearch``; the reranker is awaited, never blocking.

    Example:
        >>> rescorer = AsyncElasticsearchRescorer(AsyncElasticsearch(url), "http://gpu-box:8000")  # doctest: +SKIP
        >>> response = await rescorer.search(index="docs", query={"match": {"body": "solar panel"}})  # doctest: +SKIP
        >>> response["lychee"]["reranked"]  # doctest: +SKIP
        True
    """
