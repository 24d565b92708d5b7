"""Upstream contract: Qdrant's ``query_points`` and ``Prefetch``, as qdrant-client defines them.

``FACTS`` holds what was read in qdrant-client's source, with where; the tests run the real client in
``:memory:`` mode (the same code path as ``path=``; the server applies the same default).
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from typing import Any

import pytest
from qdrant_client import QdrantClient, models

from lychee_rerank.adapters.qdrant import QdrantReranker
from lychee_rerank.core.testing.fakes import TableReranker

FACTS: dict[str, dict[str, Any]] = {
    "prefetch_limit_default": {
        "fact": "Prefetch.limit is optional; unset, a prefetch returns 10 points",
        "default": 10,
        "source": "qdrant/qdrant-client qdrant_client/http/models/models.py Prefetch.limit ('Default is 10.'); "
        "qdrant_client/local/local_collection.py (limit=prefetch.limit if not None else 10)",
    },
    "query_points_limit": {
        "fact": "query_points' own limit bounds the fused result, not the prefetches' candidate counts",
        "source": "qdrant/qdrant-client qdrant_client/qdrant_client.py QdrantClient.query_points",
    },
}

COLLECTION = "docs"
POINTS = 120


@pytest.fixture
def client() -> Iterator[QdrantClient]:
    qdrant = QdrantClient(":memory:")
    qdrant.create_collection(
        COLLECTION, vectors_config={"dense": models.VectorParams(size=3, distance=models.Distance.COSINE)}
    )
    qdrant.upsert(
        COLLECTION,
        points=[
            models.PointStruct(
                id=index,
                vector={"dense": [1.0, index / POINTS, (index % 7) / 7.0]},
                payload={"text": f"document {index}"},
            )
            for index in range(POINTS)
        ],
    )
    yield qdrant
    qdrant.close()


def _hybrid(limits: tuple[int | None, int | None]) -> dict[str, Any]:
    return {
        "prefetch": [
            models.Prefetch(query=[1.0, 0.2, 0.1], using="dense", limit=limits[0]),
            models.Prefetch(query=[1.0, 0.9, 0.8], using="dense", limit=limits[1]),
        ],
        "query": models.FusionQuery(fusion=models.Fusion.RRF),
    }


def test_the_real_client_gives_a_prefetch_without_limit_ten_points(client: QdrantClient) -> None:
    """qdrant-client local_collection.py: an unset Prefetch.limit means 10 (this is why the adapter fills it)."""
    single = client.query_points(
        COLLECTION,
        prefetch=models.Prefetch(query=[1.0, 0.2, 0.1], using="dense"),
        query=models.FusionQuery(fusion=models.Fusion.RRF),
        limit=50,
    )
    assert len(single.points) == FACTS["prefetch_limit_default"]["default"]


def test_two_prefetches_without_limit_rerank_the_whole_window(client: QdrantClient) -> None:
    """qdrant-client Prefetch.limit defaults to 10; the adapter sends limit = window where none is given."""
    reranker = TableReranker({}, default=0.5)
    response = QdrantReranker(client, reranker, window=50).query_points(
        COLLECTION, "document", limit=10, **_hybrid((None, None))
    )
    assert len(reranker.calls[0][1]) == 50  # not 20: two prefetches of 10
    assert len(response.points) == 10


def test_the_callers_prefetch_objects_are_not_changed(client: QdrantClient) -> None:
    hybrid = _hybrid((None, 5))
    before = [prefetch.model_dump() for prefetch in hybrid["prefetch"]]
    QdrantReranker(client, TableReranker({}, default=0.5), window=30).query_points(COLLECTION, "document", **hybrid)
    assert [prefetch.model_dump() for prefetch in hybrid["prefetch"]] == before
    assert hybrid["prefetch"][0].limit is None


def test_nested_prefetches_without_limit_get_the_window_too(client: QdrantClient) -> None:
    inner = models.Prefetch(query=[1.0, 0.5, 0.5], using="dense")
    outer = models.Prefetch(prefetch=inner, query=[1.0, 0.2, 0.1], using="dense")
    reranker = TableReranker({}, default=0.5)
    QdrantReranker(client, reranker, window=40).query_points(
        COLLECTION, "document", prefetch=outer, query=[1.0, 0.1, 0.1], using="dense"
    )
    assert len(reranker.calls[0][1]) == 40


def test_explicit_prefetch_limits_that_cap_the_window_are_kept_and_warned_about(
    client: QdrantClient, caplog: pytest.LogCaptureFixture
) -> None:
    reranker = TableReranker({}, default=0.5)
    with caplog.at_level(logging.WARNING, logger="lychee_rerank.adapters.qdrant"):
        QdrantReranker(client, reranker, window=50).query_points(COLLECTION, "document", **_hybrid((5, 5)))
    assert len(reranker.calls[0][1]) <= 10
    assert "candidates for a window of 50: the prefetch limits [5, 5] cap it" in caplog.text


def test_prefetch_limits_that_fill_the_window_do_not_warn(
    client: QdrantClient, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.WARNING, logger="lychee_rerank.adapters.qdrant"):
        QdrantReranker(client, TableReranker({}, default=0.5), window=50).query_points(
            COLLECTION, "document", **_hybrid((40, 40))
        )
    assert "cap it" not in caplog.text
