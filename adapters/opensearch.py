"""OpenSearch: client-side rescoring of search hits with Lychee-Rerank-MM.

The same mechanism as :mod:`lychee_rerank.adapters.elasticsearch` (both are
:mod:`lychee_rerank.adapters._rescoring`): the user's ordinary search runs with ``size`` grown to the window,
the window's hits are reranked from their ``_source`` text and image fields, and scores are combined as
the ``query`` rescorer combines them. The response is an ordinary search response (a ``dict``) with:

- ``hits.hits[i]["_score"]``: the combined score; ``hits.max_score`` follows it.
- ``hits.hits[i]["_lychee"]``: ``{"original_score": ..., "rerank_score": ...}`` (``None`` past the window).
- ``response["lychee"]``: ``{"reranked": bool, "error": str | None, "window_size": int}``.

For reranking inside OpenSearch (a search pipeline calling the service), see
:mod:`lychee_rerank.plugins.opensearch`. Works with ``OpenSearch`` and ``AsyncOpenSearch`` from
opensearch-py 2.x and 3.x. Importing this module without the client raises an ImportError naming
``pip install 'lychee-rerank[opensearch]'``.

Example:
    >>> from opensearchpy import OpenSearch  # doctest: +SKIP
    >>> rescorer = OpenSearchRescorer(  # doctest: +SKIP
    ...     OpenSearch("http://localhost:9200"), "http://gpu-box:8000", text_fields=("caption",), image_field="image"
    ... )
    >>> response = rescorer.search(  # doctest: +SKIP
    ...     index="figures",
    ...     body={"query": {"match": {"caption": "loss curve"}}, "size": 5,
    ...           "rescore": {"window_size": 30, "lychee": {"query_weight": 0.1, "score_mode": "total"}}},
    ... )
    >>> response["lychee"]  # doctest: +SKIP
    {'reranked': True, 'error': None, 'window_size': 30}
"""

from __future__ import annotations

from lychee_rerank.core.extras import require

require("opensearchpy", "opensearch")

from opensearchpy import AsyncOpenSearch, OpenSearch  # noqa: E402

from lychee_rerank.adapters._rescoring import (  # noqa: E402
    HIT_KEY,
    RESPONSE_KEY,
    SCORE_MODES,
    SORT_ERROR,
    AsyncClientRescorer,
    ClientRescorer,
)

__all__ = ["HIT_KEY", "RESPONSE_KEY", "SCORE_MODES", "SORT_ERROR", "AsyncOpenSearchRescorer", "OpenSearchRescorer"]


class OpenSearchRescorer(ClientRescorer[OpenSearch]):
    """Reranks the top hits of an OpenSearch search on the client side.

    Arguments and ``search`` are those of
    :class:`lychee_rerank.adapters.elasticsearch.ElasticsearchRescorer`: ``client`` (an
    ``opensearchpy.OpenSearch``), ``reranker`` (a Reranker or a service URL), ``text_fields``,
    ``text_template``, ``image_field``, ``window_size`` (default 10; global, where OpenSearch's own rescore
    window is per shard), ``query_weight``, ``rerank_weight``, ``score_mode`` (total, multiply, avg, max,
    min), ``keep_window_on_top`` (default: all hits sorted together, as the query rescorer does),
    ``instruction``, ``fail_open``, ``timeout_s``. The
    whole request goes in the body; other keyword arguments of ``OpenSearch.search`` (``routing``,
    ``request_timeout``...) pass through.

    Example:
        >>> rescorer = OpenSearchRescorer(client, reranker, window_size=50)  # doctest: +SKIP
        >>> response = rescorer.search(index="docs", body={"query": {"match": {"body": "heat pump"}}})  # doctest: +SKIP
        >>> response["hits"]["hits"][0]["_lychee"]["rerank_score"]  # doctest: +SKIP
        0.97
    """


class AsyncOpenSearchRescorer(AsyncClientRescorer[AsyncOpenSearch]):
    """:class:`OpenSearchRescorer` for ``AsyncOpenSearch``; the reranker is awaited, never blocking.

    Example:
        >>> rescorer = AsyncOpenSearchRescorer(AsyncOpenSearch(url), "http://gpu-box:8000")  # doctest: +SKIP
        >>> response = await rescorer.search(index="docs", body={"query": {"match": {"x": "pump"}}})  # doctest: +SKIP
        >>> response["lychee"]["reranked"]  # doctest: +SKIP
        True
    """
