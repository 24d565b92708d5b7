"""Client-side rescoring against a real Elasticsearch (``docker compose up -d elasticsearch``).

Set ``ELASTICSEARCH_URL`` (``http://localhost:9200`` with the compose stack) to run; without it the module
skips. The reranker is the service at ``RERANK_URL`` when set, else the tiny local checkpoint. The
server-side flow (inference endpoint + ``text_similarity_reranker``) is tested with the plugin.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest
from elasticsearch import AsyncElasticsearch, Elasticsearch

from lychee_rerank.adapters.elasticsearch import (
    HIT_KEY,
    RESPONSE_KEY,
    AsyncElasticsearchRescorer,
    ElasticsearchRescorer,
)
from lychee_rerank.core import Document, LocalReranker, Reranker, as_reranker
from lychee_rerank.core.remote import RemoteReranker
from lychee_rerank.core.testing.checkpoint import write_tiny_checkpoint


def _require_url(name: str) -> str:
    url = os.environ.get(name, "").strip()
    if not url:
        pytest.skip(
            f"{name} is not set: start the stack (docker compose up -d) and set {name}, e.g. http://localhost:9200",
            allow_module_level=True,
        )
    return url


ELASTICSEARCH_URL = _require_url("ELASTICSEARCH_URL")

TITLES = [
    "white linen shirt with short sleeves",
    "red summer dress",
    "white cotton shirt, slim fit",
    "striped linen shirt",
    "denim shirt jacket",
    "shirt dress in white poplin",
    "black leather boots",
]
QUERY = {"match": {"title": "white shirt"}}


@pytest.fixture(scope="module")
def reranker(tmp_path_factory: pytest.TempPathFactory) -> Reranker:
    """The service at RERANK_URL, else the tiny checkpoint on CPU."""
    url = os.environ.get("RERANK_URL", "").strip()
    if url:
        return as_reranker(url)
    folder: Path = write_tiny_checkpoint(tmp_path_factory.mktemp("tiny-checkpoint"))
    return LocalReranker(model=str(folder), device="cpu")


@pytest.fixture(scope="module")
def client() -> Iterator[Elasticsearch]:
    es = Elasticsearch(ELASTICSEARCH_URL, request_timeout=30)
    yield es
    es.close()


@pytest.fixture(scope="module")
def index(client: Elasticsearch) -> Iterator[str]:
    """A fresh index of product titles, removed afterwards."""
    name = f"lychee-it-{uuid.uuid4().hex[:8]}"
    client.indices.create(index=name, mappings={"properties": {"title": {"type": "text"}, "sku": {"type": "keyword"}}})
    for number, title in enumerate(TITLES):
        client.index(index=name, id=str(number), document={"title": title, "sku": f"sku-{number}"})
    client.indices.refresh(index=name)
    yield name
    client.indices.delete(index=name, ignore_unavailable=True)


@pytest.fixture
async def async_client() -> AsyncIterator[AsyncElasticsearch]:
    es = AsyncElasticsearch(ELASTICSEARCH_URL, request_timeout=30)
    yield es
    await es.close()


def _first_stage(client: Elasticsearch, index: str, size: int) -> list[dict[str, Any]]:
    return list(client.search(index=index, query=QUERY, size=size)["hits"]["hits"])


def test_window_hits_carry_the_reranker_score_and_the_combined_score(
    client: Elasticsearch, index: str, reranker: Reranker
) -> None:
    first = {hit["_id"]: hit for hit in _first_stage(client, index, 10)}
    rescorer = ElasticsearchRescorer(client, reranker, text_fields=("title",), window_size=10)
    response = rescorer.search(index=index, query=QUERY, size=10)
    hits = response["hits"]["hits"]
    assert response[RESPONSE_KEY]["reranked"] is True
    assert {hit["_id"] for hit in hits} == set(first)
    expected = reranker.score("white shirt", [Document(hit["_source"]["title"]) for hit in hits])
    for hit, rerank_score in zip(hits, expected, strict=True):
        scores = hit[HIT_KEY]
        assert scores["original_score"] == pytest.approx(first[hit["_id"]]["_score"])
        assert scores["rerank_score"] == pytest.approx(rerank_score, abs=1e-5)
        assert hit["_score"] == pytest.approx(scores["original_score"] + scores["rerank_score"])  # score_mode total
    assert [hit["_score"] for hit in hits] == sorted((hit["_score"] for hit in hits), reverse=True)
    assert response["hits"]["max_score"] == pytest.approx(hits[0]["_score"])


def test_hits_past_the_window_keep_first_stage_order_behind_it(
    client: Elasticsearch, index: str, reranker: Reranker
) -> None:
    first = _first_stage(client, index, 10)
    rescorer = ElasticsearchRescorer(client, reranker, text_fields=("title",), window_size=2)
    hits = rescorer.search(index=index, query=QUERY, size=len(first))["hits"]["hits"]
    assert {hit["_id"] for hit in hits[:2]} == {hit["_id"] for hit in first[:2]}
    assert [hit["_id"] for hit in hits[2:]] == [hit["_id"] for hit in first[2:]]
    assert all(hit[HIT_KEY]["rerank_score"] is None for hit in hits[2:])


def test_source_filter_and_paging_inside_the_window(client: Elasticsearch, index: str, reranker: Reranker) -> None:
    rescorer = ElasticsearchRescorer(client, reranker, text_fields=("title",), window_size=10)
    whole = rescorer.search(index=index, query=QUERY, size=10)["hits"]["hits"]
    page = rescorer.search(index=index, query=QUERY, size=2, from_=1, source=["sku"])["hits"]["hits"]
    assert [hit["_id"] for hit in page] == [hit["_id"] for hit in whole[1:3]]
    assert all(set(hit["_source"]) == {"sku"} for hit in page)  # title was fetched only to rerank


async def test_async_client_gives_the_same_answer(
    client: Elasticsearch, async_client: AsyncElasticsearch, index: str, reranker: Reranker
) -> None:
    expected = ElasticsearchRescorer(client, reranker, text_fields=("title",), window_size=5).search(
        index=index, query=QUERY, size=5
    )
    got = await AsyncElasticsearchRescorer(async_client, reranker, text_fields=("title",), window_size=5).search(
        index=index, query=QUERY, size=5
    )
    assert [hit["_id"] for hit in got["hits"]["hits"]] == [hit["_id"] for hit in expected["hits"]["hits"]]


def test_unreachable_reranker_fails_open_with_the_server_order(client: Elasticsearch, index: str) -> None:
    down = RemoteReranker("http://127.0.0.1:9", max_retries=0, timeout=2.0)  # nothing listens on port 9
    response = ElasticsearchRescorer(client, down, text_fields=("title",)).search(index=index, query=QUERY, size=3)
    assert response[RESPONSE_KEY]["reranked"] is False
    assert response[RESPONSE_KEY]["error"]
    assert [hit["_id"] for hit in response["hits"]["hits"]] == [hit["_id"] for hit in _first_stage(client, index, 3)]
