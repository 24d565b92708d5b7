"""Contract tests: the real elasticsearch-py client over a canned node (``node_class=``).

The node plays a tiny Elasticsearch: it records each request and answers a search with the top ``size``
hits of a fixed corpus, honouring top-level ``_source`` includes/excludes/false. A stub reranker gives
fixed scores per title, so every expected score below is computed by hand.
"""

from __future__ import annotations

import asyncio
import json
import logging
from pathlib import Path
from typing import Any

import pytest
from elastic_transport import ApiResponseMeta, BaseAsyncNode, BaseNode, HttpHeaders
from elastic_transport._node._base import NodeApiResponse  # the node return type; not re-exported
from elasticsearch import AsyncElasticsearch, Elasticsearch

from lychee_rerank.adapters.elasticsearch import (
    HIT_KEY,
    RESPONSE_KEY,
    SORT_ERROR,
    AsyncElasticsearchRescorer,
    ElasticsearchRescorer,
)
from lychee_rerank.core import Document, InvalidInputError, LocalReranker, Query, RemoteReranker
from lychee_rerank.core.testing.fakes import TableReranker
from lychee_rerank.core.testing.servers import LoopbackServer, Reply

# First-stage scores descend; the stub's rerank scores are dyadic so hand-computed sums are exact.
CORPUS = [
    {"_id": "d1", "_score": 4.0, "_source": {"title": "alpha", "body": "first", "price": 10}},
    {"_id": "d2", "_score": 3.0, "_source": {"title": "beta", "body": "second", "price": 20}},
    {"_id": "d3", "_score": 2.0, "_source": {"title": "gamma", "body": "third", "price": 30}},
    {"_id": "d4", "_score": 1.0, "_source": {"title": "delta", "body": "fourth", "price": 40}},
    {"_id": "d5", "_score": 0.5, "_source": {"title": "epsilon", "body": "fifth", "price": 50}},
]
RERANK = {"alpha": 0.25, "beta": 0.75, "gamma": 0.875, "delta": 0.5, "epsilon": 0.125}
QUERY = {"match": {"title": "red dress"}}

# window 3, query_weight 0.5, rerank_weight 4: a = [2.0, 1.5, 1.0], b = [1.0, 3.0, 3.5] for d1, d2, d3.
EXPECTED_WINDOW = {
    "total": [("d2", 4.5), ("d3", 4.5), ("d1", 3.0)],
    "multiply": [("d2", 4.5), ("d3", 3.5), ("d1", 2.0)],
    "avg": [("d2", 2.25), ("d3", 2.25), ("d1", 1.5)],
    "max": [("d3", 3.5), ("d2", 3.0), ("d1", 2.0)],
    "min": [("d2", 1.5), ("d1", 1.0), ("d3", 1.0)],
}
AFTER_WINDOW = [("d4", 0.5), ("d5", 0.25)]  # original * query_weight, behind the window


def stub_reranker(table: dict[str, float] | None = None, error: BaseException | None = None) -> TableReranker:
    """Scores a document by its title/body text in ``RERANK``; records each call; may fail or stall."""
    return TableReranker(RERANK if table is None else table, error=error)


class FakeCluster:
    """Records requests; answers searches with the corpus' top ``size`` hits, ``_source`` filtered."""

    def __init__(self, corpus: list[dict[str, Any]] | None = None) -> None:
        self.corpus = CORPUS if corpus is None else corpus
        self.requests: list[tuple[str, str, Any]] = []

    def answer(self, method: str, target: str, body: bytes | None) -> bytes:
        request = json.loads(body) if body else None
        self.requests.append((method, target, request))
        request = request or {}
        hits = []
        for hit in self.corpus[: request.get("size", 10)]:
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
        response = {
            "took": 3,
            "timed_out": False,
            "_shards": {"total": 1, "successful": 1, "skipped": 0, "failed": 0},
            "hits": {
                "total": {"value": len(self.corpus), "relation": "eq"},
                "max_score": self.corpus[0]["_score"] if self.corpus else None,
                "hits": hits,
            },
        }
        return json.dumps(response).encode()


def _meta(node: BaseNode | BaseAsyncNode) -> ApiResponseMeta:
    headers = HttpHeaders({"content-type": "application/json", "x-elastic-product": "Elasticsearch"})
    return ApiResponseMeta(status=200, http_version="1.1", headers=headers, duration=0.0, node=node.config)


def sync_client(cluster: FakeCluster) -> Elasticsearch:
    class CannedNode(BaseNode):
        def perform_request(self, method: str, target: str, body: bytes | None = None, **_: Any) -> NodeApiResponse:
            return NodeApiResponse(_meta(self), cluster.answer(method, target, body))

    return Elasticsearch("http://localhost:9200", node_class=CannedNode)


def async_client(cluster: FakeCluster) -> AsyncElasticsearch:
    class AsyncCannedNode(BaseAsyncNode):
        async def perform_request(
            self, method: str, target: str, body: bytes | None = None, **_: Any
        ) -> NodeApiResponse:
            await asyncio.sleep(0)
            return NodeApiResponse(_meta(self), cluster.answer(method, target, body))

        async def close(self) -> None:
            return None

    return AsyncElasticsearch("http://localhost:9200", node_class=AsyncCannedNode)


def _ids_and_scores(response: dict[str, Any]) -> list[tuple[str, float]]:
    return [(hit["_id"], hit["_score"]) for hit in response["hits"]["hits"]]


BLOCK = {"window_size": 3, "lychee": {"query_weight": 0.5, "rerank_weight": 4.0}}


@pytest.fixture
def cluster() -> FakeCluster:
    return FakeCluster()


@pytest.fixture
def stub() -> TableReranker:
    return stub_reranker()


@pytest.mark.parametrize("score_mode", list(EXPECTED_WINDOW))
def test_every_score_mode_combines_as_elasticsearch(cluster: FakeCluster, stub: TableReranker, score_mode: str) -> None:
    rescorer = ElasticsearchRescorer(sync_client(cluster), stub, text_fields=("title",))
    block = {"window_size": 3, "lychee": {**BLOCK["lychee"], "score_mode": score_mode}}
    response = rescorer.search(index="docs", query=QUERY, rescore=block)
    expected = EXPECTED_WINDOW[score_mode] + AFTER_WINDOW
    assert _ids_and_scores(response) == expected
    assert response["hits"]["max_score"] == max(score for _, score in expected)
    assert response["hits"]["total"] == {"value": 5, "relation": "eq"}
    assert response[RESPONSE_KEY] == {"reranked": True, "error": None, "window_size": 3}
    by_id = {hit["_id"]: hit[HIT_KEY] for hit in response["hits"]["hits"]}
    assert by_id["d2"] == {"original_score": 3.0, "rerank_score": 0.75}
    assert by_id["d4"] == {"original_score": 1.0, "rerank_score": None}
    # Only the window went to the reranker, in first-stage order, against the match query's text.
    [(query, documents, _)] = stub.calls
    assert query == Query("red dress")
    assert [document.text for document in documents] == ["alpha", "beta", "gamma"]


def test_request_sent_is_the_users_search_grown_to_the_window(cluster: FakeCluster, stub: TableReranker) -> None:
    rescorer = ElasticsearchRescorer(sync_client(cluster), stub, text_fields=("title",), window_size=4)
    body = {"query": QUERY, "size": 2, "from": 1, "aggs": {"prices": {"max": {"field": "price"}}}}
    rescorer.search(index="docs", body=body, routing="r1")
    [(method, target, sent)] = cluster.requests
    assert (method, target.split("?")[0]) == ("POST", "/docs/_search")
    assert "routing=r1" in target
    assert sent == {"query": QUERY, "size": 4, "aggs": {"prices": {"max": {"field": "price"}}}}
    assert body == {"query": QUERY, "size": 2, "from": 1, "aggs": {"prices": {"max": {"field": "price"}}}}


def test_server_side_rescore_entries_are_forwarded(cluster: FakeCluster, stub: TableReranker) -> None:
    native = {"window_size": 20, "query": {"rescore_query": {"match_phrase": {"body": "x"}}}}
    rescorer = ElasticsearchRescorer(sync_client(cluster), stub, text_fields=("title",))
    rescorer.search(index="docs", query=QUERY, rescore=[native, BLOCK])
    assert cluster.requests[0][2] == {"query": QUERY, "size": 10, "rescore": [native]}


def test_window_larger_than_total_hits_reranks_them_all(cluster: FakeCluster, stub: TableReranker) -> None:
    rescorer = ElasticsearchRescorer(sync_client(cluster), stub, text_fields=("title",), window_size=50)
    response = rescorer.search(index="docs", query=QUERY, size=10)
    assert cluster.requests[0][2]["size"] == 50
    # total mode, weights 1: original + rerank.
    assert _ids_and_scores(response) == [("d1", 4.25), ("d2", 3.75), ("d3", 2.875), ("d4", 1.5), ("d5", 0.625)]
    assert all(hit[HIT_KEY]["rerank_score"] is not None for hit in response["hits"]["hits"])


def test_from_and_size_page_inside_the_window(cluster: FakeCluster, stub: TableReranker) -> None:
    rescorer = ElasticsearchRescorer(sync_client(cluster), stub, text_fields=("title",))
    response = rescorer.search(index="docs", query=QUERY, from_=1, size=1, rescore=BLOCK)
    assert cluster.requests[0][2]["size"] == 3
    assert _ids_and_scores(response) == [("d3", 4.5)]
    assert response["hits"]["max_score"] == 4.5  # of the whole rescored list, not of the page


def test_page_past_the_window_keeps_first_stage_hits_behind_it(cluster: FakeCluster, stub: TableReranker) -> None:
    rescorer = ElasticsearchRescorer(sync_client(cluster), stub, text_fields=("title",))
    response = rescorer.search(index="docs", query=QUERY, from_=2, size=3, rescore=BLOCK)
    assert cluster.requests[0][2]["size"] == 5  # from + size, beyond the window of 3
    assert _ids_and_scores(response) == [("d1", 3.0), ("d4", 0.5), ("d5", 0.25)]
    assert [hit[HIT_KEY]["rerank_score"] for hit in response["hits"]["hits"]] == [0.25, None, None]
    assert len(stub.calls[0][1]) == 3


def test_hits_past_the_window_are_sorted_with_the_window_as_query_rescorer_combine(stub: TableReranker) -> None:
    """elastic/elasticsearch QueryRescorer.combine: past the window ``score *= queryWeight``, then all re-sorted."""
    corpus = [
        {"_id": "a", "_score": 1.0, "_source": {"title": "alpha"}},
        {"_id": "b", "_score": 1.0, "_source": {"title": "beta"}},
    ]
    cluster = FakeCluster(corpus)
    rescorer = ElasticsearchRescorer(
        sync_client(cluster), stub, text_fields=("title",), window_size=1, score_mode="multiply"
    )
    response = rescorer.search(index="docs", query=QUERY)
    assert _ids_and_scores(response) == [("b", 1.0), ("a", 0.25)]


def test_keep_window_on_top_keeps_hits_past_the_window_behind(stub: TableReranker) -> None:
    corpus = [
        {"_id": "a", "_score": 1.0, "_source": {"title": "alpha"}},
        {"_id": "b", "_score": 1.0, "_source": {"title": "beta"}},
    ]
    cluster = FakeCluster(corpus)
    rescorer = ElasticsearchRescorer(
        sync_client(cluster),
        stub,
        text_fields=("title",),
        window_size=1,
        score_mode="multiply",
        keep_window_on_top=True,
    )
    response = rescorer.search(index="docs", query=QUERY)
    assert _ids_and_scores(response) == [("a", 0.25), ("b", 1.0)]
    per_search = ElasticsearchRescorer(sync_client(cluster), stub, text_fields=("title",))
    block = {"window_size": 1, "lychee": {"score_mode": "multiply", "keep_window_on_top": True}}
    assert _ids_and_scores(per_search.search(index="docs", query=QUERY, rescore=block)) == [("a", 0.25), ("b", 1.0)]


def test_negative_query_weight_reorders_hits_past_the_window_as_elasticsearch_does() -> None:
    """QueryRescorer.combine multiplies the hits past the window by a negative weight too, then sorts."""
    corpus = [
        {"_id": name, "_score": score, "_source": {"title": name}}
        for name, score in (("a", 3.0), ("b", 2.0), ("c", 1.0))
    ]
    rescorer = ElasticsearchRescorer(
        sync_client(FakeCluster(corpus)),
        stub_reranker({"a": 0.5, "b": 0.5, "c": 0.5}),
        text_fields=("title",),
        window_size=1,
        query_weight=-1.0,
    )
    response = rescorer.search(index="docs", query=QUERY)
    # c: -1.0 and b: -2.0 past the window; a: -3.0 + 0.5 stays below both.
    assert [hit["_id"] for hit in response["hits"]["hits"]] == ["c", "b", "a"]


def test_page_beyond_all_hits_is_empty(cluster: FakeCluster, stub: TableReranker) -> None:
    rescorer = ElasticsearchRescorer(sync_client(cluster), stub, text_fields=("title",))
    response = rescorer.search(index="docs", query=QUERY, from_=8, size=5, rescore=BLOCK)
    assert response["hits"]["hits"] == []
    assert response["hits"]["total"]["value"] == 5


def test_no_hits_never_calls_the_reranker(stub: TableReranker) -> None:
    cluster = FakeCluster([])
    response = ElasticsearchRescorer(sync_client(cluster), stub).search(index="docs", query=QUERY)
    assert response["hits"]["hits"] == []
    assert response["hits"]["max_score"] is None
    assert stub.calls == []


def test_source_includes_are_widened_and_rerank_fields_stripped(cluster: FakeCluster, stub: TableReranker) -> None:
    rescorer = ElasticsearchRescorer(sync_client(cluster), stub, text_fields=("title",))
    response = rescorer.search(index="docs", query=QUERY, source=["price"], rescore=BLOCK)
    assert cluster.requests[0][2]["_source"] == {"includes": ["price", "title"]}
    assert [hit["_source"] for hit in response["hits"]["hits"]] == [
        {"price": 20},
        {"price": 30},
        {"price": 10},
        {"price": 40},
        {"price": 50},
    ]
    assert [document.text for document in stub.calls[0][1]] == ["alpha", "beta", "gamma"]


def test_source_excludes_of_a_rerank_field_are_lifted_then_applied(cluster: FakeCluster, stub: TableReranker) -> None:
    rescorer = ElasticsearchRescorer(sync_client(cluster), stub, text_fields=("title",))
    body = {"query": QUERY, "_source": {"excludes": ["title", "body"]}, "rescore": BLOCK}
    response = rescorer.search(index="docs", body=body)
    assert cluster.requests[0][2]["_source"] == {"excludes": ["body"]}
    assert response["hits"]["hits"][0]["_source"] == {"price": 20}


def test_source_false_fetches_only_rerank_fields_and_returns_none(cluster: FakeCluster, stub: TableReranker) -> None:
    rescorer = ElasticsearchRescorer(sync_client(cluster), stub, text_fields=("title",), window_size=3)
    response = rescorer.search(index="docs", query=QUERY, source=False)
    assert cluster.requests[0][2]["_source"] == {"includes": ["title"]}
    assert all("_source" not in hit for hit in response["hits"]["hits"])
    assert _ids_and_scores(response) == [("d1", 4.25), ("d2", 3.75), ("d3", 2.875), ("d4", 1.0), ("d5", 0.5)]


def test_source_filter_covering_rerank_fields_is_sent_unchanged(cluster: FakeCluster, stub: TableReranker) -> None:
    rescorer = ElasticsearchRescorer(sync_client(cluster), stub, text_fields=("title",))
    response = rescorer.search(index="docs", query=QUERY, source_includes="title,price", rescore=BLOCK)
    assert cluster.requests[0][2]["_source"] == {"includes": ["title", "price"]}
    assert response["hits"]["hits"][0]["_source"] == {"title": "beta", "price": 20}


def test_text_template_and_rerank_query_and_instruction(cluster: FakeCluster) -> None:
    stub = stub_reranker({f"{h['_source']['title']}: {h['_source']['body']}": 0.5 for h in CORPUS})
    rescorer = ElasticsearchRescorer(
        sync_client(cluster), stub, text_template="{title}: {body}", instruction="ecommerce", window_size=2
    )
    rescorer.search(index="docs", query={"term": {"tag": "x"}}, rerank_query="linen shirt")
    [(query, documents, instruction)] = stub.calls
    assert query == Query("linen shirt")
    assert [document.text for document in documents] == ["alpha: first", "beta: second"]
    assert instruction == "ecommerce"


def test_query_without_a_simple_text_needs_rerank_query(cluster: FakeCluster, stub: TableReranker) -> None:
    rescorer = ElasticsearchRescorer(sync_client(cluster), stub, text_fields=("title",))
    two_texts = {"bool": {"should": [{"match": {"title": "a"}}, {"match": {"body": "b"}}]}}
    with pytest.raises(InvalidInputError, match="rerank_query="):
        rescorer.search(index="docs", query=two_texts)
    assert cluster.requests == []


@pytest.mark.parametrize("sort", ["price", [{"price": "asc"}], [{"_score": "asc"}], ["_score", "price"]])
def test_sort_other_than_score_is_refused_with_elasticsearchs_message(
    cluster: FakeCluster, stub: TableReranker, sort: Any
) -> None:
    rescorer = ElasticsearchRescorer(sync_client(cluster), stub)
    with pytest.raises(InvalidInputError) as raised:
        rescorer.search(index="docs", query=QUERY, sort=sort)
    assert str(raised.value) == SORT_ERROR == "Cannot use [sort] option in conjunction with [rescore]."
    assert cluster.requests == []


def test_sort_by_score_is_accepted(cluster: FakeCluster, stub: TableReranker) -> None:
    rescorer = ElasticsearchRescorer(sync_client(cluster), stub, text_fields=("title",))
    response = rescorer.search(index="docs", query=QUERY, sort=[{"_score": {"order": "desc"}}], rescore=BLOCK)
    assert response["hits"]["hits"][0]["_id"] == "d2"


def test_bad_rescore_options_are_refused_before_searching(cluster: FakeCluster, stub: TableReranker) -> None:
    rescorer = ElasticsearchRescorer(sync_client(cluster), stub)
    with pytest.raises(InvalidInputError, match="score_mode must be one of total, multiply, avg, max, min"):
        rescorer.search(index="docs", query=QUERY, rescore={"lychee": {"score_mode": "sum"}})
    with pytest.raises(InvalidInputError, match="rescore_query_weight"):
        rescorer.search(index="docs", query=QUERY, rescore={"lychee": {"rescore_query_weight": 2}})
    with pytest.raises(InvalidInputError, match="window_size"):
        rescorer.search(index="docs", query=QUERY, rescore={"window_size": 0, "lychee": {}})
    with pytest.raises(InvalidInputError, match="'size' is given both"):
        rescorer.search(index="docs", body={"query": QUERY, "size": 3}, size=4)
    assert cluster.requests == []


def test_fail_open_keeps_first_stage_order_flagged_and_logged(
    cluster: FakeCluster, caplog: pytest.LogCaptureFixture
) -> None:
    stub = stub_reranker(error=ConnectionRefusedError("rerank service down"))
    rescorer = ElasticsearchRescorer(sync_client(cluster), stub, text_fields=("title",))
    with caplog.at_level(logging.WARNING):
        response = rescorer.search(index="docs", query=QUERY, size=2, source=["price"], rescore=BLOCK)
    assert _ids_and_scores(response) == [("d1", 4.0), ("d2", 3.0)]
    assert response["hits"]["max_score"] == 4.0
    assert response[RESPONSE_KEY]["reranked"] is False
    assert "rerank service down" in response[RESPONSE_KEY]["error"]
    assert response["hits"]["hits"][0][HIT_KEY] == {"original_score": 4.0, "rerank_score": None}
    assert response["hits"]["hits"][0]["_source"] == {"price": 10}
    assert "reranking failed" in caplog.text


async def test_a_refused_api_key_is_reported_in_the_response_and_logged_as_an_error(
    cluster: FakeCluster, caplog: pytest.LogCaptureFixture
) -> None:
    body = {"error": {"type": "unauthorized", "message": "missing or wrong API key", "status": 401}}
    with LoopbackServer(lambda number, request: Reply.json(401, body)) as server, caplog.at_level(logging.WARNING):
        reranker = RemoteReranker(server.url, api_key="wrong")
        response = ElasticsearchRescorer(sync_client(cluster), reranker, text_fields=("title",)).search(
            index="docs", query=QUERY, size=2, rescore=BLOCK
        )
        asynchronous = await AsyncElasticsearchRescorer(async_client(cluster), reranker, text_fields=("title",)).search(
            index="docs", query=QUERY, size=2, rescore=BLOCK
        )
    for answered in (response, asynchronous):
        assert answered[RESPONSE_KEY]["reranked"] is False
        assert answered[RESPONSE_KEY]["error"].startswith("RemoteAuthError:")
        assert "LYCHEE_API_KEY" in answered[RESPONSE_KEY]["error"]
        assert _ids_and_scores(answered) == [("d1", 4.0), ("d2", 3.0)]
    assert {record.levelno for record in caplog.records} == {logging.ERROR}


def test_fail_closed_raises_the_rerankers_error(cluster: FakeCluster) -> None:
    stub = stub_reranker(error=ConnectionRefusedError("rerank service down"))
    rescorer = ElasticsearchRescorer(sync_client(cluster), stub, fail_open=False)
    with pytest.raises(ConnectionRefusedError, match="rerank service down"):
        rescorer.search(index="docs", query=QUERY)


def test_timeout_falls_back_to_first_stage_order(cluster: FakeCluster, stub: TableReranker) -> None:
    stub.delay_s = 1.0
    rescorer = ElasticsearchRescorer(sync_client(cluster), stub, text_fields=("title",), timeout_s=0.05)
    response = rescorer.search(index="docs", query=QUERY, size=3)
    assert [hit_id for hit_id, _ in _ids_and_scores(response)] == ["d1", "d2", "d3"]
    assert "timeout_s=0.05" in response[RESPONSE_KEY]["error"]


def test_invalid_image_field_raises_even_when_failing_open(stub: TableReranker) -> None:
    cluster = FakeCluster([{"_id": "x", "_score": 1.0, "_source": {"title": "alpha", "image": 42}}])
    rescorer = ElasticsearchRescorer(sync_client(cluster), stub, text_fields=("title",), image_field="image")
    with pytest.raises(InvalidInputError, match="image"):
        rescorer.search(index="docs", query=QUERY)


class DictClient:
    """An older-style client whose ``search`` returns the response as a plain dict."""

    def __init__(self, cluster: FakeCluster) -> None:
        self.cluster = cluster
        self.calls: list[dict[str, Any]] = []

    def search(self, **kwargs: Any) -> Any:
        self.calls.append(kwargs)
        return json.loads(
            self.cluster.answer("POST", f"/{kwargs['index']}/_search", json.dumps(kwargs["body"]).encode())
        )


class BodyResponse:
    """An ``ObjectApiResponse`` look-alike that is not a mapping: only ``.body`` holds the dict (8.x/9.x)."""

    def __init__(self, body: dict[str, Any]) -> None:
        self.body = body


class BodyClient(DictClient):
    def search(self, **kwargs: Any) -> Any:
        return BodyResponse(super().search(**kwargs))


@pytest.mark.parametrize("client_class", [DictClient, BodyClient])
def test_plain_dict_and_body_attribute_responses_both_work(
    cluster: FakeCluster, stub: TableReranker, client_class: type[DictClient]
) -> None:
    client = client_class(cluster)
    rescorer = ElasticsearchRescorer(client, stub, text_fields=("title",))  # type: ignore[arg-type]
    response = rescorer.search(index="docs", query=QUERY, rescore=BLOCK)
    assert _ids_and_scores(response) == EXPECTED_WINDOW["total"] + AFTER_WINDOW
    assert client.calls == [{"index": "docs", "body": {"query": QUERY, "size": 10}}]  # from + size > window


def test_real_client_object_api_response_is_unwrapped(cluster: FakeCluster, stub: TableReranker) -> None:
    client = sync_client(cluster)
    raw = client.search(index="docs", query=QUERY)
    # elasticsearch-py 8.x and 9.x both return an ObjectApiResponse: the dict is its .body, beside .meta.
    assert isinstance(raw.body, dict)
    assert raw.meta.status == 200
    response = ElasticsearchRescorer(client, stub, text_fields=("title",)).search(index="docs", query=QUERY)
    assert type(response) is dict


def test_sync_rescorer_refuses_an_async_client(cluster: FakeCluster, stub: TableReranker) -> None:
    rescorer = ElasticsearchRescorer(async_client(cluster), stub)  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="Async"):
        rescorer.search(index="docs", query=QUERY)


async def test_async_client_rescores_the_same_way(cluster: FakeCluster, stub: TableReranker) -> None:
    client = async_client(cluster)
    rescorer = AsyncElasticsearchRescorer(client, stub, text_fields=("title",))
    block = {"window_size": 3, "lychee": {**BLOCK["lychee"], "score_mode": "max"}}
    response = await rescorer.search(index="docs", query=QUERY, size=4, source={"includes": ["price"]}, rescore=block)
    assert _ids_and_scores(response) == [*EXPECTED_WINDOW["max"], ("d4", 0.5)]
    assert cluster.requests[0][2] == {"query": QUERY, "size": 4, "_source": {"includes": ["price", "title"]}}
    assert response["hits"]["hits"][0]["_source"] == {"price": 30}
    await client.close()


async def test_async_fail_open_and_fail_closed(cluster: FakeCluster) -> None:
    stub = stub_reranker(error=ConnectionResetError("reset"))
    client = async_client(cluster)
    response = await AsyncElasticsearchRescorer(client, stub, text_fields=("title",)).search(
        index="docs", query=QUERY, size=2
    )
    assert _ids_and_scores(response) == [("d1", 4.0), ("d2", 3.0)]
    assert response[RESPONSE_KEY]["reranked"] is False
    with pytest.raises(ConnectionResetError):
        await AsyncElasticsearchRescorer(client, stub, fail_open=False).search(index="docs", query=QUERY)
    await client.close()


def test_rerank_scores_are_the_tiny_rerankers_scores(tiny_reranker: LocalReranker, image_files: list[Path]) -> None:
    corpus = [
        {"_id": "t", "_score": 2.0, "_source": {"title": "white shirt", "body": "linen, slim fit"}},
        {"_id": "i", "_score": 1.5, "_source": {"title": "photo", "body": "", "image": str(image_files[0])}},
        {"_id": "o", "_score": 1.0, "_source": {"title": "red dress", "body": "cotton"}},
    ]
    cluster = FakeCluster(corpus)
    rescorer = ElasticsearchRescorer(
        sync_client(cluster), tiny_reranker, text_fields=("title", "body"), image_field="image", window_size=3
    )
    response = rescorer.search(index="docs", query={"multi_match": {"query": "white shirt", "fields": ["title"]}})
    expected = tiny_reranker.score(
        Query("white shirt"),
        [
            Document("white shirt\nlinen, slim fit"),
            Document("photo", image=str(image_files[0])),
            Document("red dress\ncotton"),
        ],
    )
    got = {hit["_id"]: hit[HIT_KEY]["rerank_score"] for hit in response["hits"]["hits"]}
    assert got == pytest.approx(dict(zip(["t", "i", "o"], expected, strict=True)), abs=1e-6)
    for hit in response["hits"]["hits"]:
        assert hit["_score"] == pytest.approx(hit[HIT_KEY]["original_score"] + hit[HIT_KEY]["rerank_score"])
