"""Client-side rescoring against a real OpenSearch (``docker compose up -d opensearch``).

Set ``OPENSEARCH_URL`` (``http://localhost:9201`` with the compose stack) to run; without it the module
skips. The reranker is the service at ``RERANK_URL`` when set, else the tiny local checkpoint. The
server-side flow (ml-commons connector + search pipeline) is tested with the plugin.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest
from opensearchpy import AsyncOpenSearch, OpenSearch

from lychee_rerank.adapters.opensearch import HIT_KEY, RESPONSE_KEY, AsyncOpenSearchRescorer, OpenSearchRescorer
from lychee_rerank.core import Document, LocalReranker, Reranker, as_reranker
from lychee_rerank.core.remote import RemoteReranker
from lychee_rerank.core.testing.checkpoint import write_tiny_checkpoint


def _require_url(name: str) -> str:
    url = os.environ.get(name, "").strip()
    if not url:
        pytest.skip(
            f"{name} is not set: start the stack (docker compose up -d) and set {name}, e.g. http://localhost:9201",
            allow_module_level=True,
        )
    return url


OPENSEARCH_URL = _require_url("OPENSEARCH_URL")

CAPTIONS = [
    "line chart of training loss over 100 epochs",
    "table of top-1 accuracy on ImageNet",
    "bar chart of accuracy per model size",
    "photo of the experimental setup",
    "loss curve of the validation set",
    "architecture diagram of the encoder",
]
QUERY = {"match": {"caption": "loss curve chart"}}


@pytest.fixture(scope="module")
def reranker(tmp_path_factory: pytest.TempPathFactory) -> Reranker:
    """The service at RERANK_URL, else the tiny checkpoint on CPU."""
    url = os.environ.get("RERANK_URL", "").strip()
    if url:
        return as_reranker(url)
    folder: Path = write_tiny_checkpoint(tmp_path_factory.mktemp("tiny-checkpoint"))
    return LocalReranker(model=str(folder), device="cpu")


@pytest.fixture(scope="module")
def client() -> Iterator[OpenSearch]:
    opensearch = OpenSearch(hosts=[OPENSEARCH_URL], timeout=30)
    yield opensearch
    opensearch.close()


@pytest.fixture(scope="module")
def index(client: OpenSearch) -> Iterator[str]:
    """A fresh index of figure captions, removed afterwards."""
    name = f"lychee-it-{uuid.uuid4().hex[:8]}"
    client.indices.create(
        index=name, body={"mappings": {"properties": {"caption": {"type": "text"}, "figure": {"type": "keyword"}}}}
    )
    for number, caption in enumerate(CAPTIONS):
        client.index(index=name, id=str(number), body={"caption": caption, "figure": f"fig-{number}"})
    client.indices.refresh(index=name)
    yield name
    client.indices.delete(index=name, ignore_unavailable=True)


@pytest.fixture
async def async_client() -> AsyncIterator[AsyncOpenSearch]:
    opensearch = AsyncOpenSearch(hosts=[OPENSEARCH_URL], timeout=30)
    yield opensearch
    await opensearch.close()


def _first_stage(client: OpenSearch, index: str, size: int) -> list[dict[str, Any]]:
    return list(client.search(index=index, body={"query": QUERY, "size": size})["hits"]["hits"])


def test_window_hits_carry_the_reranker_score_and_the_combined_score(
    client: OpenSearch, index: str, reranker: Reranker
) -> None:
    first = {hit["_id"]: hit for hit in _first_stage(client, index, 10)}
    rescorer = OpenSearchRescorer(client, reranker, text_fields=("caption",), window_size=10, query_weight=0.5)
    response = rescorer.search(index=index, body={"query": QUERY, "size": 10})
    hits = response["hits"]["hits"]
    assert response[RESPONSE_KEY]["reranked"] is True
    assert {hit["_id"] for hit in hits} == set(first)
    expected = reranker.score("loss curve chart", [Document(hit["_source"]["caption"]) for hit in hits])
    for hit, rerank_score in zip(hits, expected, strict=True):
        scores = hit[HIT_KEY]
        assert scores["original_score"] == pytest.approx(first[hit["_id"]]["_score"])
        assert scores["rerank_score"] == pytest.approx(rerank_score, abs=1e-5)
        assert hit["_score"] == pytest.approx(0.5 * scores["original_score"] + scores["rerank_score"])
    assert [hit["_score"] for hit in hits] == sorted((hit["_score"] for hit in hits), reverse=True)


def test_rescore_block_in_the_body_sets_window_and_score_mode(
    client: OpenSearch, index: str, reranker: Reranker
) -> None:
    first = _first_stage(client, index, 10)
    body = {"query": QUERY, "size": len(first), "rescore": {"window_size": 2, "lychee": {"score_mode": "max"}}}
    hits = OpenSearchRescorer(client, reranker, text_fields=("caption",)).search(index=index, body=body)["hits"]["hits"]
    assert [hit["_id"] for hit in hits[2:]] == [hit["_id"] for hit in first[2:]]
    for hit in hits[:2]:
        scores = hit[HIT_KEY]
        assert hit["_score"] == pytest.approx(max(scores["original_score"], scores["rerank_score"]))


async def test_async_client_gives_the_same_answer(
    client: OpenSearch, async_client: AsyncOpenSearch, index: str, reranker: Reranker
) -> None:
    body = {"query": QUERY, "size": 4}
    expected = OpenSearchRescorer(client, reranker, text_fields=("caption",)).search(index=index, body=body)
    got = await AsyncOpenSearchRescorer(async_client, reranker, text_fields=("caption",)).search(index=index, body=body)
    assert [hit["_id"] for hit in got["hits"]["hits"]] == [hit["_id"] for hit in expected["hits"]["hits"]]


def test_unreachable_reranker_fails_open_with_the_server_order(client: OpenSearch, index: str) -> None:
    down = RemoteReranker("http://127.0.0.1:9", max_retries=0, timeout=2.0)  # nothing listens on port 9
    response = OpenSearchRescorer(client, down, text_fields=("caption",)).search(
        index=index, body={"query": QUERY, "size": 3}
    )
    assert response[RESPONSE_KEY]["reranked"] is False
    assert [hit["_id"] for hit in response["hits"]["hits"]] == [hit["_id"] for hit in _first_stage(client, index, 3)]
