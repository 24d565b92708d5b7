"""Every adapter with the real service behind it, in a process without torch.

Search engines are the real client libraries over canned transports (Elasticsearch, OpenSearch) or in local
mode (Qdrant ``:memory:``); each adapter's rerank scores must be the service's scores for the same documents.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from elastic_transport import ApiResponseMeta, BaseNode, HttpHeaders
from elastic_transport._node._base import NodeApiResponse  # the node return type; not re-exported
from elasticsearch import Elasticsearch
from langchain_core.documents import Document as LangChainDocument
from llama_index.core.schema import ImageNode, NodeWithScore, QueryBundle, TextNode
from opensearchpy import Connection, OpenSearch
from qdrant_client import QdrantClient, models

from lychee_rerank.adapters.elasticsearch import HIT_KEY, RESPONSE_KEY, ElasticsearchRescorer
from lychee_rerank.adapters.langchain import RELEVANCE_SCORE_KEY
from lychee_rerank.adapters.langchain import LycheeRerank as LangChainRerank
from lychee_rerank.adapters.llamaindex import LycheeRerank as LlamaIndexRerank
from lychee_rerank.adapters.opensearch import OpenSearchRescorer
from lychee_rerank.adapters.qdrant import FIRST_STAGE_SCORE_KEY, QdrantReranker
from lychee_rerank.core import Document, RemoteReranker
from lychee_rerank.plugins.elasticsearch import text_similarity_reranker_body
from lychee_rerank.plugins.opensearch import rerank_search_body

IMAGES = Path(__file__).resolve().parent.parent / "examples" / "images"
QUERY_TEXT = "white linen shirt"
TITLES = ["red leather shoes", "white linen shirt", "blue cotton shirt", "revenue chart", "green rain coat"]
HITS = [
    {"_index": "products", "_id": f"p{index}", "_score": 5.0 - index, "_source": {"title": title}}
    for index, title in enumerate(TITLES)
]


def _search_response(size: int) -> bytes:
    hits = HITS[:size]
    return json.dumps(
        {
            "took": 1,
            "timed_out": False,
            "_shards": {"total": 1, "successful": 1, "skipped": 0, "failed": 0},
            "hits": {"total": {"value": len(HITS), "relation": "eq"}, "max_score": 5.0, "hits": hits},
        }
    ).encode()


def _size(body: bytes | str | None) -> int:
    return int(json.loads(body or "{}").get("size", 10))


def _elasticsearch() -> Elasticsearch:
    class CannedNode(BaseNode):
        def perform_request(self, method: str, target: str, body: bytes | None = None, **_: Any) -> NodeApiResponse:
            headers = HttpHeaders({"content-type": "application/json", "x-elastic-product": "Elasticsearch"})
            meta = ApiResponseMeta(status=200, http_version="1.1", headers=headers, duration=0.0, node=self.config)
            return NodeApiResponse(meta, _search_response(_size(body)))

    return Elasticsearch("http://localhost:9200", node_class=CannedNode)


def _opensearch() -> OpenSearch:
    class CannedConnection(Connection):
        def perform_request(  # type: ignore[override]
            self, method: str, url: str, params: Any = None, body: bytes | None = None, **_: Any
        ) -> tuple[int, dict[str, str], str]:
            return 200, {"content-type": "application/json"}, _search_response(_size(body)).decode()

    return OpenSearch(hosts=["http://localhost:9200"], connection_class=CannedConnection)


def _assert_rescored_with(response: dict[str, Any], expected: dict[str, float], window: int) -> None:
    assert response[RESPONSE_KEY]["reranked"] is True, response[RESPONSE_KEY]
    hits = response["hits"]["hits"]
    for hit in hits:
        if hit["_source"]["title"] in expected:
            rerank_score = hit[HIT_KEY]["rerank_score"]
            assert rerank_score == pytest.approx(expected[hit["_source"]["title"]], abs=1e-4)
            # total mode, both weights 1: first-stage score plus rerank score
            assert hit["_score"] == pytest.approx(hit[HIT_KEY]["original_score"] + rerank_score, abs=1e-4)
    window_scores = [hit["_score"] for hit in hits[:window]]
    assert window_scores == sorted(window_scores, reverse=True)


def _expected(remote: RemoteReranker, titles: list[str]) -> dict[str, float]:
    return dict(zip(titles, remote.score(QUERY_TEXT, titles), strict=True))


def test_elasticsearch_rescorer_scores_the_window_with_the_service(remote: RemoteReranker) -> None:
    rescorer = ElasticsearchRescorer(_elasticsearch(), remote, text_fields=("title",), window_size=4)
    response = rescorer.search(index="products", query={"match": {"title": QUERY_TEXT}}, size=5)
    _assert_rescored_with(response, _expected(remote, TITLES[:4]), window=4)
    assert response["hits"]["hits"][4][HIT_KEY]["rerank_score"] is None  # behind the window


def test_opensearch_rescorer_scores_the_window_with_the_service(service_url: str, remote: RemoteReranker) -> None:
    rescorer = OpenSearchRescorer(_opensearch(), service_url, text_fields=("title",), window_size=3)
    response = rescorer.search(index="products", body={"query": {"match": {"title": QUERY_TEXT}}, "size": 3})
    _assert_rescored_with(response, _expected(remote, TITLES[:3]), window=3)


def test_qdrant_reranker_in_memory_mode(service_url: str, remote: RemoteReranker) -> None:
    client = QdrantClient(":memory:")
    client.create_collection("products", vectors_config=models.VectorParams(size=2, distance=models.Distance.DOT))
    client.upsert(
        "products",
        points=[
            models.PointStruct(id=index, vector=[1.0, float(index)], payload={"text": title})
            for index, title in enumerate(TITLES)
        ],
    )
    response = QdrantReranker(client, service_url, window=5).query_points(
        "products", query=[1.0, 1.0], rerank_query=QUERY_TEXT, limit=3
    )
    expected = _expected(remote, TITLES)
    points = response.points
    assert len(points) == 3
    assert [point.score for point in points] == pytest.approx(sorted(expected.values(), reverse=True)[:3], abs=1e-4)
    for point in points:
        assert point.payload is not None
        assert point.score == pytest.approx(expected[point.payload["text"]], abs=1e-4)
        assert FIRST_STAGE_SCORE_KEY in point.payload
    client.close()


def test_langchain_compressor_sets_the_services_scores(remote: RemoteReranker) -> None:
    documents = [LangChainDocument(page_content=title, metadata={"id": index}) for index, title in enumerate(TITLES)]
    documents[1].metadata["image_path"] = str(IMAGES / "shirt_white.png")
    compressed = LangChainRerank(reranker=remote, top_n=2).compress_documents(documents, QUERY_TEXT)
    expected = remote.score(QUERY_TEXT, [Document(title) for title in TITLES])
    expected[1] = remote.score(QUERY_TEXT, [Document(TITLES[1], image=str(IMAGES / "shirt_white.png"))])[0]
    best = sorted(range(len(TITLES)), key=lambda index: -expected[index])[:2]
    assert [document.metadata["id"] for document in compressed] == best
    assert [document.metadata[RELEVANCE_SCORE_KEY] for document in compressed] == pytest.approx(
        [expected[index] for index in best], abs=1e-4
    )
    assert all(RELEVANCE_SCORE_KEY not in document.metadata for document in documents)  # copies, not mutations


async def test_llamaindex_postprocessor_scores_text_and_image_nodes(remote: RemoteReranker) -> None:
    nodes = [NodeWithScore(node=TextNode(text=title, id_=f"t{index}"), score=1.0) for index, title in enumerate(TITLES)]
    nodes.append(NodeWithScore(node=ImageNode(image_path=str(IMAGES / "shirt_white.png"), id_="image"), score=1.0))
    postprocessor = LlamaIndexRerank(reranker=remote, top_n=3)
    kept = await postprocessor.apostprocess_nodes(nodes, query_bundle=QueryBundle(QUERY_TEXT))
    documents = [Document(title) for title in TITLES] + [Document(image=str(IMAGES / "shirt_white.png"))]
    expected = remote.score(QUERY_TEXT, documents)
    best = sorted(range(len(documents)), key=lambda index: -expected[index])[:3]
    assert [node.node.node_id for node in kept] == [nodes[index].node.node_id for index in best]
    assert [node.score for node in kept] == pytest.approx([expected[index] for index in best], abs=1e-4)


def test_plugin_request_bodies_build_without_a_cluster() -> None:
    body = text_similarity_reranker_body({"match": {"title": QUERY_TEXT}}, field="title", inference_text=QUERY_TEXT)
    assert body["retriever"]["text_similarity_reranker"]["inference_text"] == QUERY_TEXT
    assert rerank_search_body({"match": {"title": QUERY_TEXT}}, query_text=QUERY_TEXT, size=5)["size"] == 5
