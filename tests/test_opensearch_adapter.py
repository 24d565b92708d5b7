"""Contract tests: the real opensearch-py client over a canned connection (``connection_class=``).

The client's own transport serialises requests and parses responses; only the socket is replaced. The
connection plays a tiny OpenSearch answering with the top ``size`` hits of a fixed corpus, honouring
top-level ``_source`` includes/excludes/false. A stub reranker gives fixed scores per title.
"""

from __future__ import annotations

import asyncio
import json
import logging
from typing import Any

import pytest
from opensearchpy import AsyncConnection, AsyncOpenSearch, Connection, OpenSearch

from lychee_rerank.adapters.opensearch import (
    HIT_KEY,
    RESPONSE_KEY,
    SORT_ERROR,
    AsyncOpenSearchRescorer,
    OpenSearchRescorer,
)
from lychee_rerank.core import InvalidInputError
from lychee_rerank.core.testing.fakes import TableReranker

CORPUS = [
    {"_id": "d1", "_score": 4.0, "_source": {"title": "alpha", "body": "first", "price": 10}},
    {"_id": "d2", "_score": 3.0, "_source": {"title": "beta", "body": "second", "price": 20}},
    {"_id": "d3", "_score": 2.0, "_source": {"title": "gamma", "body": "third", "price": 30}},
    {"_id": "d4", "_score": 1.0, "_source": {"title": "delta", "body": "fourth", "price": 40}},
    {"_id": "d5", "_score": 0.5, "_source": {"title": "epsilon", "body": "fifth", "price": 50}},
]
RERANK = {"alpha": 0.25, "beta": 0.75, "gamma": 0.875, "delta": 0.5, "epsilon": 0.125}
QUERY = {"match": {"title": "red dress"}}
BLOCK = {"window_size": 3, "lychee": {"query_weight": 0.5, "rerank_weight": 4.0}}

# window 3, query_weight 0.5, rerank_weight 4: a = [2.0, 1.5, 1.0], b = [1.0, 3.0, 3.5] for d1, d2, d3;
# past the window d4 and d5 score original * 0.5.
EXPECTED = {
    "total": [("d2", 4.5), ("d3", 4.5), ("d1", 3.0), ("d4", 0.5), ("d5", 0.25)],
    "multiply": [("d2", 4.5), ("d3", 3.5), ("d1", 2.0), ("d4", 0.5), ("d5", 0.25)],
    "avg": [("d2", 2.25), ("d3", 2.25), ("d1", 1.5), ("d4", 0.5), ("d5", 0.25)],
    "max": [("d3", 3.5), ("d2", 3.0), ("d1", 2.0), ("d4", 0.5), ("d5", 0.25)],
    "min": [("d2", 1.5), ("d1", 1.0), ("d3", 1.0), ("d4", 0.5), ("d5", 0.25)],
}


def stub_reranker(error: BaseException | None = None) -> TableReranker:
    """Scores a document by its text in ``RERANK``; records each call; may fail."""
    return TableReranker(RERANK, error=error)


class FakeCluster:
    """Records requests; answers searches with the corpus' top ``size`` hits, ``_source`` filtered."""

    def __init__(self) -> None:
        self.requests: list[tuple[str, str, dict[str, Any] | None, Any]] = []

    def answer(self, method: str, url: str, params: Any, body: bytes | None) -> str:
        request = json.loads(body) if body else None
        self.requests.append((method, url, dict(params or {}), request))
        request = request or {}
        hits = []
        for hit in CORPUS[: request.get("size", 10)]:
            hit = {"_index": "docs", **hit}
            source = request.get("_source", True)
            if isinstance(source, (str, list)):
                source = {"includes": [source] if isinstance(source, str) else source}
            if source is False:
                del hit["_source"]
            elif isinstance(source, dict):
                includes, excludes = source.get("includes"), source.get("excludes", [])
                hit["_source"] = {
                    key: value
                    for key, value in hit["_source"].items()
                    if (includes is None or key in includes) and key not in excludes
                }
            hits.append(hit)
        total = {"value": len(CORPUS), "relation": "eq"}
        return json.dumps({"took": 2, "timed_out": False, "hits": {"total": total, "max_score": 4.0, "hits": hits}})


HEADERS = {"content-type": "application/json"}


def sync_client(cluster: FakeCluster) -> OpenSearch:
    class CannedConnection(Connection):
        def perform_request(  # type: ignore[override]
            self, method: str, url: str, params: Any = None, body: bytes | None = None, **_: Any
        ) -> tuple[int, dict[str, str], str]:
            return 200, HEADERS, cluster.answer(method, url, params, body)

    return OpenSearch(hosts=["http://localhost:9200"], connection_class=CannedConnection)


def async_client(cluster: FakeCluster) -> AsyncOpenSearch:
    class AsyncCannedConnection(AsyncConnection):
        async def perform_request(  # type: ignore[override]
            self, method: str, url: str, params: Any = None, body: bytes | None = None, **_: Any
        ) -> tuple[int, dict[str, str], str]:
            await asyncio.sleep(0)
            return 200, HEADERS, cluster.answer(method, url, params, body)

        async def close(self) -> None:
            return None

    return AsyncOpenSearch(hosts=["http://localhost:9200"], connection_class=AsyncCannedConnection)


def _ids_and_scores(response: dict[str, Any]) -> list[tuple[str, float]]:
    return [(hit["_id"], hit["_score"]) for hit in response["hits"]["hits"]]


@pytest.fixture
def cluster() -> FakeCluster:
    return FakeCluster()


@pytest.mark.parametrize("score_mode", list(EXPECTED))
def test_every_score_mode_combines_as_the_query_rescorer(cluster: FakeCluster, score_mode: str) -> None:
    stub = stub_reranker()
    rescorer = OpenSearchRescorer(sync_client(cluster), stub, text_fields=("title",))
    body = {"query": QUERY, "rescore": {"window_size": 3, "lychee": {**BLOCK["lychee"], "score_mode": score_mode}}}
    response = rescorer.search(index="docs", body=body)
    assert _ids_and_scores(response) == EXPECTED[score_mode]
    assert response["hits"]["max_score"] == max(score for _, score in EXPECTED[score_mode])
    assert response[RESPONSE_KEY] == {"reranked": True, "error": None, "window_size": 3}
    assert [document.text for document in stub.calls[0][1]] == ["alpha", "beta", "gamma"]


def test_request_body_sent_is_the_users_search_grown_to_the_window(cluster: FakeCluster) -> None:
    rescorer = OpenSearchRescorer(sync_client(cluster), stub_reranker(), text_fields=("title",), window_size=4)
    body = {"query": QUERY, "size": 2, "from": 1, "track_total_hits": True}
    rescorer.search(index="docs", body=body, routing="r1")
    [(method, url, params, sent)] = cluster.requests
    assert (method, url) == ("POST", "/docs/_search")
    assert params == {"routing": b"r1"}  # opensearch-py encodes query parameters
    assert sent == {"query": QUERY, "size": 4, "track_total_hits": True}
    assert body == {"query": QUERY, "size": 2, "from": 1, "track_total_hits": True}  # the caller's body is untouched


def test_paging_inside_and_past_the_window(cluster: FakeCluster) -> None:
    rescorer = OpenSearchRescorer(sync_client(cluster), stub_reranker(), text_fields=("title",))
    inside = rescorer.search(index="docs", body={"query": QUERY, "from": 1, "size": 2, "rescore": BLOCK})
    assert _ids_and_scores(inside) == [("d3", 4.5), ("d1", 3.0)]
    past = rescorer.search(index="docs", body={"query": QUERY, "from": 2, "size": 3, "rescore": BLOCK})
    assert cluster.requests[-1][3]["size"] == 5
    assert _ids_and_scores(past) == [("d1", 3.0), ("d4", 0.5), ("d5", 0.25)]
    assert past["hits"]["hits"][1][HIT_KEY] == {"original_score": 1.0, "rerank_score": None}


def test_window_larger_than_total_hits(cluster: FakeCluster) -> None:
    rescorer = OpenSearchRescorer(sync_client(cluster), stub_reranker(), text_fields=("title",), window_size=100)
    response = rescorer.search(index="docs", body={"query": QUERY, "size": 2})
    assert cluster.requests[0][3]["size"] == 100
    assert _ids_and_scores(response) == [("d1", 4.25), ("d2", 3.75)]


@pytest.mark.parametrize(
    ("source", "sent", "returned"),
    [
        (["price"], {"includes": ["price", "title"]}, {"price": 20}),
        ({"excludes": ["title"]}, True, {"body": "second", "price": 20}),
        (False, {"includes": ["title"]}, None),
        (["title"], ["title"], {"title": "beta"}),
    ],
)
def test_source_filters_are_honoured(cluster: FakeCluster, source: Any, sent: Any, returned: Any) -> None:
    rescorer = OpenSearchRescorer(sync_client(cluster), stub_reranker(), text_fields=("title",))
    response = rescorer.search(index="docs", body={"query": QUERY, "_source": source, "rescore": BLOCK})
    assert cluster.requests[0][3]["_source"] == sent
    first = response["hits"]["hits"][0]
    assert first["_id"] == "d2"
    assert first.get("_source") == returned


def test_sort_other_than_score_is_refused(cluster: FakeCluster) -> None:
    rescorer = OpenSearchRescorer(sync_client(cluster), stub_reranker())
    with pytest.raises(InvalidInputError) as raised:
        rescorer.search(index="docs", body={"query": QUERY, "sort": [{"price": {"order": "desc"}}]})
    assert str(raised.value) == SORT_ERROR
    assert cluster.requests == []


def test_fail_open_and_fail_closed(cluster: FakeCluster, caplog: pytest.LogCaptureFixture) -> None:
    stub = stub_reranker(error=ConnectionRefusedError("down"))
    with caplog.at_level(logging.WARNING):
        response = OpenSearchRescorer(sync_client(cluster), stub).search(index="docs", body={"query": QUERY, "size": 3})
    assert _ids_and_scores(response) == [("d1", 4.0), ("d2", 3.0), ("d3", 2.0)]
    assert response[RESPONSE_KEY]["reranked"] is False
    assert response[RESPONSE_KEY]["error"] == "ConnectionRefusedError: down"
    assert "reranking failed" in caplog.text
    with pytest.raises(ConnectionRefusedError):
        OpenSearchRescorer(sync_client(cluster), stub, fail_open=False).search(index="docs", body={"query": QUERY})


async def test_async_client_rescores_the_same_way(cluster: FakeCluster) -> None:
    client = async_client(cluster)
    rescorer = AsyncOpenSearchRescorer(client, stub_reranker(), text_fields=("title",))
    body = {"query": QUERY, "size": 4, "_source": ["price"], "rescore": {**BLOCK, "lychee": {"score_mode": "min"}}}
    response = await rescorer.search(index="docs", body=body)
    # min of (original * 1, rerank * 1): d1 0.25, d2 0.75, d3 0.875; d4 scores 1.0 past the window and is
    # sorted with them, as the query rescorer's combine does.
    assert _ids_and_scores(response) == [("d4", 1.0), ("d3", 0.875), ("d2", 0.75), ("d1", 0.25)]
    assert cluster.requests[0][3] == {"query": QUERY, "size": 4, "_source": {"includes": ["price", "title"]}}
    assert response["hits"]["hits"][1]["_source"] == {"price": 30}
    await client.close()


async def test_async_fail_open(cluster: FakeCluster) -> None:
    client = async_client(cluster)
    stub = stub_reranker(error=TimeoutError("slow"))
    response = await AsyncOpenSearchRescorer(client, stub).search(index="docs", body={"query": QUERY, "size": 2})
    assert _ids_and_scores(response) == [("d1", 4.0), ("d2", 3.0)]
    assert response[RESPONSE_KEY] == {"reranked": False, "error": "TimeoutError: slow", "window_size": 10}
    await client.close()


def test_async_rescorer_refuses_a_sync_client(cluster: FakeCluster) -> None:
    rescorer = AsyncOpenSearchRescorer(sync_client(cluster), stub_reranker())  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="sync"):
        asyncio.run(rescorer.search(index="docs", body={"query": QUERY}))
