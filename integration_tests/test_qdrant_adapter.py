"""Qdrant post-processing against a real Qdrant server (``docker compose up -d qdrant``).

Set ``QDRANT_URL`` (``http://localhost:6333`` with the compose stack) to run; without it the module skips.
The reranker is the service at ``RERANK_URL`` when set, else the tiny local checkpoint. The same data is
loaded into the server and into the client's local mode, and the answers are compared: the adapter must
not care which backend the client talks to.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest
from qdrant_client import AsyncQdrantClient, QdrantClient, models

from lychee_rerank.adapters.qdrant import FIRST_STAGE_SCORE_KEY, RERANK_FAILED_KEY, AsyncQdrantReranker, QdrantReranker
from lychee_rerank.core import Document, LocalReranker, Reranker, as_reranker
from lychee_rerank.core.remote import RemoteReranker
from lychee_rerank.core.testing.checkpoint import write_tiny_checkpoint


def _require_url(name: str) -> str:
    url = os.environ.get(name, "").strip()
    if not url:
        pytest.skip(
            f"{name} is not set: start the stack (docker compose up -d) and set {name}, e.g. http://localhost:6333",
            allow_module_level=True,
        )
    return url


QDRANT_URL = _require_url("QDRANT_URL")

TEXTS = [
    "white linen shirt with short sleeves",
    "red summer dress",
    "blue denim jacket",
    "white cotton shirt, slim fit",
    "black leather boots",
    "striped linen shirt",
]


@pytest.fixture(scope="module")
def reranker(tmp_path_factory: pytest.TempPathFactory) -> Reranker:
    """The service at RERANK_URL, else the tiny checkpoint on CPU."""
    url = os.environ.get("RERANK_URL", "").strip()
    if url:
        return as_reranker(url)
    folder: Path = write_tiny_checkpoint(tmp_path_factory.mktemp("tiny-checkpoint"))
    return LocalReranker(model=str(folder), device="cpu")


def _points() -> list[models.PointStruct]:
    return [
        models.PointStruct(
            id=index,
            vector={
                "dense": [1.0, index / 6.0, (6 - index) / 6.0],
                "sparse": models.SparseVector(indices=[index % 3, 10 + index], values=[1.0 + index / 10, 0.5]),
            },
            payload={"text": text, "kind": "shirt" if "shirt" in text else "other"},
        )
        for index, text in enumerate(TEXTS)
    ]


def _collection_config() -> dict[str, Any]:
    return {
        "vectors_config": {"dense": models.VectorParams(size=3, distance=models.Distance.COSINE)},
        "sparse_vectors_config": {"sparse": models.SparseVectorParams()},
    }


HYBRID: dict[str, Any] = {
    "prefetch": [
        models.Prefetch(query=[1.0, 0.5, 0.5], using="dense", limit=10),
        models.Prefetch(query=models.SparseVector(indices=[0, 1, 2], values=[1.0, 0.7, 0.4]), using="sparse"),
    ],
    "query": models.FusionQuery(fusion=models.Fusion.RRF),
}


@pytest.fixture(scope="module")
def collection() -> Iterator[str]:
    """A fresh collection on the server, removed afterwards."""
    name = f"lychee-it-{uuid.uuid4().hex[:8]}"
    client = QdrantClient(url=QDRANT_URL)
    client.create_collection(name, **_collection_config())
    client.upsert(name, points=_points(), wait=True)
    yield name
    client.delete_collection(name)
    client.close()


@pytest.fixture(scope="module")
def local_twin(collection: str) -> Iterator[QdrantClient]:
    """The same collection in the client's local mode."""
    client = QdrantClient(":memory:")
    client.create_collection(collection, **_collection_config())
    client.upsert(collection, points=_points())
    yield client
    client.close()


@pytest.fixture
async def async_client() -> AsyncIterator[AsyncQdrantClient]:
    client = AsyncQdrantClient(url=QDRANT_URL)
    yield client
    await client.close()


def test_server_and_local_mode_give_the_same_reranked_answer(
    collection: str, local_twin: QdrantClient, reranker: Reranker
) -> None:
    server = QdrantClient(url=QDRANT_URL)
    try:
        arguments: dict[str, Any] = {"rerank_query": "white shirt", "limit": 4, "with_payload": ["kind"], **HYBRID}
        remote = QdrantReranker(server, reranker, window=6).query_points(collection, **arguments)
        local = QdrantReranker(local_twin, reranker, window=6).query_points(collection, **arguments)
    finally:
        server.close()
    assert [p.id for p in remote.points] == [p.id for p in local.points]
    for mine, twin in zip(remote.points, local.points, strict=True):
        assert mine.score == pytest.approx(twin.score, abs=1e-5)
        assert mine.payload is not None
        assert twin.payload is not None
        assert mine.payload["kind"] == twin.payload["kind"]
        assert mine.payload[FIRST_STAGE_SCORE_KEY] == pytest.approx(twin.payload[FIRST_STAGE_SCORE_KEY])
        assert set(mine.payload) == {"kind", FIRST_STAGE_SCORE_KEY}


def test_rerank_scores_are_the_reranker_scores_of_the_payload_text(collection: str, reranker: Reranker) -> None:
    server = QdrantClient(url=QDRANT_URL)
    try:
        response = QdrantReranker(server, reranker, window=6).query_points(
            collection, rerank_query="linen shirt", limit=6, **HYBRID
        )
    finally:
        server.close()
    texts = [p.payload["text"] for p in response.points]  # type: ignore[index]
    expected = reranker.score("linen shirt", [Document(text) for text in texts])
    assert [p.score for p in response.points] == pytest.approx(expected, abs=1e-5)
    assert [p.score for p in response.points] == sorted(p.score for p in response.points)[::-1]


def test_filter_threshold_and_offset_on_the_server(collection: str, reranker: Reranker) -> None:
    server = QdrantClient(url=QDRANT_URL)
    shirts = models.Filter(must=[models.FieldCondition(key="kind", match=models.MatchValue(value="shirt"))])
    try:
        qdrant_reranker = QdrantReranker(server, reranker)
        whole = qdrant_reranker.query_points(collection, rerank_query="shirt", query_filter=shirts, **HYBRID)
        paged = qdrant_reranker.query_points(
            collection, rerank_query="shirt", query_filter=shirts, offset=1, limit=1, **HYBRID
        )
        cut = qdrant_reranker.query_points(
            collection, rerank_query="shirt", query_filter=shirts, score_threshold=whole.points[1].score, **HYBRID
        )
    finally:
        server.close()
    assert {p.payload["kind"] for p in whole.points} == {"shirt"}  # type: ignore[index]
    assert len(whole.points) == 3
    assert [p.id for p in paged.points] == [whole.points[1].id]
    assert [p.id for p in cut.points] == [p.id for p in whole.points[:2]]


async def test_async_client_on_the_server(
    collection: str, local_twin: QdrantClient, reranker: Reranker, async_client: AsyncQdrantClient
) -> None:
    got = await AsyncQdrantReranker(async_client, reranker, window=6).query_points(
        collection, rerank_query="white shirt", limit=3, **HYBRID
    )
    expected = QdrantReranker(local_twin, reranker, window=6).query_points(
        collection, rerank_query="white shirt", limit=3, **HYBRID
    )
    assert [p.id for p in got.points] == [p.id for p in expected.points]
    assert [p.score for p in got.points] == pytest.approx([p.score for p in expected.points], abs=1e-5)


def test_unreachable_reranker_fails_open_with_the_server_order(collection: str) -> None:
    server = QdrantClient(url=QDRANT_URL)
    down = RemoteReranker("http://127.0.0.1:9", max_retries=0, timeout=2.0)  # nothing listens on port 9
    try:
        first = server.query_points(collection, limit=3, **HYBRID).points
        response = QdrantReranker(server, down).query_points(collection, rerank_query="shirt", limit=3, **HYBRID)
    finally:
        server.close()
    assert [p.id for p in response.points] == [p.id for p in first]
    assert all((p.payload or {}).get(RERANK_FAILED_KEY) is True for p in response.points)
