"""Qdrant post-processing against the real client in local mode (``:memory:``, ``path=``, async).

The first stage is a hybrid query: dense + sparse prefetch fused with RRF. Most tests rerank with a
table-driven stub of the :class:`Reranker` dependency so that the expected order is known; the
congruence tests use the tiny model and compare with ``tiny_reranker.score`` on the same payloads.
"""

from __future__ import annotations

import asyncio
import base64
import logging
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import pytest
from qdrant_client import AsyncQdrantClient, QdrantClient, models
from qdrant_client.http.models import QueryResponse

from lychee_rerank.adapters.qdrant import (
    FIRST_STAGE_SCORE_KEY,
    RERANK_ERROR_KEY,
    RERANK_FAILED_KEY,
    AsyncQdrantReranker,
    QdrantReranker,
)
from lychee_rerank.core import Document, InvalidInputError, LocalReranker, Query, RemoteReranker
from lychee_rerank.core.testing.fakes import TableReranker
from lychee_rerank.core.testing.servers import LoopbackServer, Reply

COLLECTION = "products"
TEXTS = [
    "white linen shirt",
    "red summer dress",
    "blue denim jacket",
    "white cotton shirt",
    "black leather boots",
    "red wool scarf",
    "green rain coat",
    "white running shoes",
]
# Stub scores, deliberately unlike the first-stage order, so reranking visibly reorders.
STUB_SCORES = {text: score for text, score in zip(TEXTS, [0.2, 0.9, 0.4, 0.7, 0.1, 0.8, 0.3, 0.6], strict=True)}


def _dense(seed: int) -> list[float]:
    return [1.0, seed / 8.0, (8 - seed) / 8.0, (seed % 3) / 3.0]


def _sparse(seed: int) -> models.SparseVector:
    return models.SparseVector(indices=[seed % 4, 10 + seed], values=[1.0 + seed / 10.0, 0.5])


HYBRID: dict[str, Any] = {
    "prefetch": [
        models.Prefetch(query=_dense(3), using="dense", limit=20),
        models.Prefetch(query=models.SparseVector(indices=[0, 1, 2, 3], values=[1.0, 0.8, 0.6, 0.4]), using="sparse"),
    ],
    "query": models.FusionQuery(fusion=models.Fusion.RRF),
}


def _fill(client: QdrantClient) -> None:
    client.create_collection(
        COLLECTION,
        vectors_config={"dense": models.VectorParams(size=4, distance=models.Distance.COSINE)},
        sparse_vectors_config={"sparse": models.SparseVectorParams()},
    )
    client.upsert(
        COLLECTION,
        points=[
            models.PointStruct(
                id=index,
                vector={"dense": _dense(index), "sparse": _sparse(index)},
                payload={
                    "text": text,
                    "category": "shirt" if "shirt" in text else "other",
                    "meta": {"caption": f"photo of {text}", "sku": f"sku-{index}"},
                },
            )
            for index, text in enumerate(TEXTS)
        ],
    )


def table_reranker(table: dict[str, float] | None = None, error: BaseException | None = None) -> TableReranker:
    """Scores a document by its text in ``STUB_SCORES`` (0 when absent); records what it was asked."""
    return TableReranker(STUB_SCORES if table is None else table, default=0.0, error=error)


@pytest.fixture
def client() -> Iterator[QdrantClient]:
    qdrant = QdrantClient(":memory:")
    _fill(qdrant)
    yield qdrant
    qdrant.close()


def _first_stage(client: QdrantClient, limit: int, **arguments: Any) -> list[models.ScoredPoint]:
    return client.query_points(COLLECTION, limit=limit, **{**HYBRID, **arguments}).points


def _expected(points: Sequence[models.ScoredPoint]) -> list[int]:
    """Ids sorted by stub score, best first (ties keep first-stage order)."""
    ranked = sorted(enumerate(points), key=lambda pair: (-STUB_SCORES[pair[1].payload["text"]], pair[0]))  # type: ignore[index]
    return [point.id for _, point in ranked]  # type: ignore[misc]


def test_hybrid_rrf_results_are_sorted_by_rerank_score_with_first_stage_score_kept(client: QdrantClient) -> None:
    first = _first_stage(client, 8)
    assert len(first) == 8
    stub = table_reranker()
    response = QdrantReranker(client, stub, window=8).query_points(
        COLLECTION, rerank_query="white shirt", limit=8, **HYBRID
    )
    assert isinstance(response, QueryResponse)
    assert [p.id for p in response.points] == _expected(first)
    assert [p.score for p in response.points] == sorted(STUB_SCORES.values(), reverse=True)
    first_scores = {p.id: p.score for p in first}
    for point in response.points:
        assert point.payload is not None
        assert point.payload[FIRST_STAGE_SCORE_KEY] == first_scores[point.id]
        assert point.score == STUB_SCORES[point.payload["text"]]
    # The reranker saw the query text and the candidates in first-stage order.
    query, documents, _ = stub.calls[0]
    assert query == Query("white shirt")
    assert [d.text for d in documents] == [p.payload["text"] for p in first]  # type: ignore[index]


def test_window_bounds_the_candidates_sent_to_the_reranker(client: QdrantClient) -> None:
    stub = table_reranker()
    response = QdrantReranker(client, stub, window=3).query_points(COLLECTION, rerank_query="q", limit=3, **HYBRID)
    first = _first_stage(client, 3)
    assert [d.text for d in stub.calls[0][1]] == [p.payload["text"] for p in first]  # type: ignore[index]
    assert [p.id for p in response.points] == _expected(first)


def test_limit_and_offset_page_the_reranked_window(client: QdrantClient) -> None:
    reranker = QdrantReranker(client, table_reranker(), window=8)
    whole = [p.id for p in reranker.query_points(COLLECTION, rerank_query="q", limit=8, **HYBRID).points]
    page = reranker.query_points(COLLECTION, rerank_query="q", limit=3, offset=2, **HYBRID).points
    assert [p.id for p in page] == whole[2:5]


def test_page_past_the_window_is_short_then_empty(client: QdrantClient) -> None:
    reranker = QdrantReranker(client, table_reranker(), window=4)
    assert len(reranker.query_points(COLLECTION, rerank_query="q", limit=3, offset=2, **HYBRID).points) == 2
    assert reranker.query_points(COLLECTION, rerank_query="q", limit=3, offset=4, **HYBRID).points == []


def test_window_is_never_smaller_than_limit(client: QdrantClient) -> None:
    stub = table_reranker()
    response = QdrantReranker(client, stub, window=2).query_points(COLLECTION, rerank_query="q", limit=5, **HYBRID)
    assert len(response.points) == 5
    assert len(stub.calls[0][1]) == 5


def test_per_call_window_overrides_the_default(client: QdrantClient) -> None:
    stub = table_reranker()
    QdrantReranker(client, stub, window=8).query_points(COLLECTION, rerank_query="q", limit=1, window=2, **HYBRID)
    assert len(stub.calls[0][1]) == 2


def test_score_threshold_applies_to_rerank_scores_before_the_page(client: QdrantClient) -> None:
    reranker = QdrantReranker(client, table_reranker(), window=8)
    kept = reranker.query_points(COLLECTION, rerank_query="q", limit=8, score_threshold=0.6, **HYBRID).points
    assert [p.score for p in kept] == [0.9, 0.8, 0.7, 0.6]
    # Passed on to Qdrant, the same threshold would have cut the fused first-stage scores instead.
    first_stage_kept = {p.id for p in _first_stage(client, 8, score_threshold=0.6)}
    assert first_stage_kept != {p.id for p in kept}
    paged = reranker.query_points(COLLECTION, rerank_query="q", limit=8, offset=3, score_threshold=0.6, **HYBRID)
    assert [p.score for p in paged.points] == [0.6]


def test_query_filter_restricts_the_candidates(client: QdrantClient) -> None:
    shirts = models.Filter(must=[models.FieldCondition(key="category", match=models.MatchValue(value="shirt"))])
    stub = table_reranker()
    response = QdrantReranker(client, stub).query_points(
        COLLECTION, rerank_query="q", limit=10, query_filter=shirts, **HYBRID
    )
    assert [p.payload["text"] for p in response.points] == ["white cotton shirt", "white linen shirt"]  # type: ignore[index]
    assert len(stub.calls[0][1]) == 2


def test_plain_dense_query_without_prefetch(client: QdrantClient) -> None:
    stub = table_reranker()
    response = QdrantReranker(client, stub, window=4).query_points(
        COLLECTION, rerank_query="q", query=_dense(5), using="dense", limit=2
    )
    first = client.query_points(COLLECTION, query=_dense(5), using="dense", limit=4).points
    assert [p.id for p in response.points] == _expected(first)[:2]


def test_with_payload_true_returns_the_whole_payload_plus_the_first_stage_score(client: QdrantClient) -> None:
    point = (
        QdrantReranker(client, table_reranker()).query_points(COLLECTION, rerank_query="q", limit=1, **HYBRID).points[0]
    )
    assert point.payload is not None
    assert set(point.payload) == {"text", "category", "meta", FIRST_STAGE_SCORE_KEY}


def test_with_payload_false_returns_only_the_first_stage_score(client: QdrantClient) -> None:
    stub = table_reranker()
    points = (
        QdrantReranker(client, stub)
        .query_points(COLLECTION, rerank_query="q", limit=8, with_payload=False, **HYBRID)
        .points
    )
    assert all(set(p.payload or {}) == {FIRST_STAGE_SCORE_KEY} for p in points)
    assert [p.score for p in points] == sorted(STUB_SCORES.values(), reverse=True)  # text was fetched to rerank
    bare = QdrantReranker(client, table_reranker(), first_stage_score_key=None).query_points(
        COLLECTION, rerank_query="q", limit=2, with_payload=False, **HYBRID
    )
    assert [p.payload for p in bare.points] == [None, None]


def test_with_payload_list_strips_fields_fetched_only_for_reranking(client: QdrantClient) -> None:
    asked = ["category"]
    points = (
        QdrantReranker(client, table_reranker())
        .query_points(COLLECTION, rerank_query="q", limit=8, with_payload=asked, **HYBRID)
        .points
    )
    assert asked == ["category"]  # the caller's list is not changed
    assert all(set(p.payload or {}) == {"category", FIRST_STAGE_SCORE_KEY} for p in points)
    assert [p.score for p in points] == sorted(STUB_SCORES.values(), reverse=True)


def test_with_payload_include_keeps_a_text_field_the_caller_asked_for(client: QdrantClient) -> None:
    selector = models.PayloadSelectorInclude(include=["text"])
    point = (
        QdrantReranker(client, table_reranker())
        .query_points(COLLECTION, rerank_query="q", limit=1, with_payload=selector, **HYBRID)
        .points[0]
    )
    assert set(point.payload or {}) == {"text", FIRST_STAGE_SCORE_KEY}


def test_with_payload_exclude_hides_the_text_field_but_still_reranks_by_it(client: QdrantClient) -> None:
    selector = models.PayloadSelectorExclude(exclude=["text", "meta.sku"])
    points = (
        QdrantReranker(client, table_reranker())
        .query_points(COLLECTION, rerank_query="q", limit=8, with_payload=selector, **HYBRID)
        .points
    )
    assert selector.exclude == ["text", "meta.sku"]
    assert [p.score for p in points] == sorted(STUB_SCORES.values(), reverse=True)
    for point in points:
        assert point.payload is not None
        assert set(point.payload) == {"category", "meta", FIRST_STAGE_SCORE_KEY}
        assert set(point.payload["meta"]) == {"caption"}


def test_nested_text_fields_are_read_and_stripped_by_dotted_path(client: QdrantClient) -> None:
    stub = table_reranker({f"photo of {text}": score for text, score in STUB_SCORES.items()})
    points = (
        QdrantReranker(client, stub, text_fields=["meta.caption"])
        .query_points(COLLECTION, rerank_query="q", limit=8, with_payload=["meta.sku"], **HYBRID)
        .points
    )
    assert [p.score for p in points] == sorted(STUB_SCORES.values(), reverse=True)
    for point in points:
        assert point.payload is not None
        assert set(point.payload) == {"meta", FIRST_STAGE_SCORE_KEY}
        assert point.payload["meta"] == {"sku": f"sku-{point.id}"}


def test_several_text_fields_are_joined_by_newlines(client: QdrantClient) -> None:
    stub = table_reranker()
    QdrantReranker(client, stub, text_fields=["category", "text"]).query_points(
        COLLECTION, rerank_query="q", limit=1, query=_dense(0), using="dense"
    )
    assert stub.calls[0][1][0].text == "shirt\nwhite linen shirt"


def test_caller_arguments_and_client_results_are_not_changed(client: QdrantClient) -> None:
    prefetch = [models.Prefetch(query=_dense(1), using="dense", limit=5)]
    where = models.Filter(must_not=[models.FieldCondition(key="category", match=models.MatchValue(value="x"))])
    before = ([p.model_dump() for p in prefetch], where.model_dump())
    QdrantReranker(client, table_reranker()).query_points(
        COLLECTION,
        rerank_query="q",
        limit=3,
        prefetch=prefetch,
        query=models.FusionQuery(fusion=models.Fusion.RRF),
        query_filter=where,
    )
    assert ([p.model_dump() for p in prefetch], where.model_dump()) == before
    assert all(FIRST_STAGE_SCORE_KEY not in (p.payload or {}) for p in _first_stage(client, 8))


def test_empty_result_returns_at_once_without_calling_the_reranker(client: QdrantClient) -> None:
    nothing = models.Filter(must=[models.FieldCondition(key="category", match=models.MatchValue(value="none"))])
    stub = table_reranker()
    response = QdrantReranker(client, stub).query_points(COLLECTION, rerank_query="q", query_filter=nothing, **HYBRID)
    assert response.points == []
    assert stub.calls == []


def test_instruction_from_the_constructor_and_overridden_per_call(client: QdrantClient) -> None:
    stub = table_reranker()
    reranker = QdrantReranker(client, stub, instruction="ecommerce")
    reranker.query_points(COLLECTION, rerank_query="q", limit=1, **HYBRID)
    reranker.query_points(COLLECTION, rerank_query="q", limit=1, instruction="academic", **HYBRID)
    assert [call[2] for call in stub.calls] == ["ecommerce", "academic"]


def test_points_without_the_fields_are_scored_as_empty_documents_with_a_warning(
    client: QdrantClient, caplog: pytest.LogCaptureFixture
) -> None:
    stub = table_reranker()
    with caplog.at_level(logging.WARNING, logger="lychee_rerank.adapters.qdrant"):
        points = (
            QdrantReranker(client, stub, text_fields=["title"], image_fields=[])
            .query_points(COLLECTION, rerank_query="q", limit=2, **HYBRID)
            .points
        )
    assert len(points) == 2
    assert all(d == Document(text="") for d in stub.calls[0][1])
    assert "none of the payload fields ['title']" in caplog.text


def test_a_text_field_holding_an_object_is_refused_naming_the_point(client: QdrantClient) -> None:
    with pytest.raises(InvalidInputError, match=r"point \d+: payload field 'meta'"):
        QdrantReranker(client, table_reranker(), text_fields=["meta"]).query_points(
            COLLECTION, rerank_query="q", limit=1, **HYBRID
        )


# --- fail-open / fail-closed ---------------------------------------------------------------------------


def test_fail_open_keeps_first_stage_order_flagged_and_logged(
    client: QdrantClient, caplog: pytest.LogCaptureFixture
) -> None:
    first = _first_stage(client, 8)
    failing = table_reranker(error=ConnectionRefusedError("rerank service down"))
    with caplog.at_level(logging.WARNING):
        points = (
            QdrantReranker(client, failing, window=8)
            .query_points(COLLECTION, rerank_query="q", limit=3, offset=1, score_threshold=0.99, **HYBRID)
            .points
        )
    assert [p.id for p in points] == [p.id for p in first[1:4]]
    for point, original in zip(points, first[1:4], strict=True):
        assert point.score == original.score
        assert point.payload is not None
        assert point.payload[RERANK_FAILED_KEY] is True
        assert point.payload[FIRST_STAGE_SCORE_KEY] == original.score
    assert "rerank service down" in caplog.text


def test_a_refused_api_key_is_reported_in_the_payload_and_logged_as_an_error(
    client: QdrantClient, caplog: pytest.LogCaptureFixture
) -> None:
    body = {"error": {"type": "unauthorized", "message": "missing or wrong API key", "status": 401}}
    first = _first_stage(client, 2)
    with LoopbackServer(lambda number, request: Reply.json(401, body)) as server, caplog.at_level(logging.WARNING):
        reranker = QdrantReranker(client, RemoteReranker(server.url, api_key="wrong"), timeout_s=5.0)
        points = reranker.query_points(COLLECTION, rerank_query="q", limit=2, **HYBRID).points
    assert [p.id for p in points] == [p.id for p in first]
    for point in points:
        assert point.payload is not None
        assert point.payload[RERANK_FAILED_KEY] is True
        assert point.payload[RERANK_ERROR_KEY].startswith("RemoteAuthError:")
    assert {record.levelno for record in caplog.records} == {logging.ERROR}


def test_fail_closed_raises_the_reranker_error(client: QdrantClient) -> None:
    failing = table_reranker(error=ConnectionRefusedError("rerank service down"))
    with pytest.raises(ConnectionRefusedError, match="rerank service down"):
        QdrantReranker(client, failing, fail_open=False).query_points(COLLECTION, rerank_query="q", **HYBRID)


def test_invalid_input_raises_even_when_failing_open(client: QdrantClient) -> None:
    failing = table_reranker(error=InvalidInputError("document 0: image is not decodable"))
    with pytest.raises(InvalidInputError, match="not decodable"):
        QdrantReranker(client, failing).query_points(COLLECTION, rerank_query="q", **HYBRID)


def test_a_slow_reranker_past_timeout_fails_open(client: QdrantClient) -> None:
    slow = TableReranker(STUB_SCORES, default=0.0, delay_s=0.5)
    points = (
        QdrantReranker(client, slow, timeout_s=0.05)
        .query_points(COLLECTION, rerank_query="q", limit=2, **HYBRID)
        .points
    )
    assert all((p.payload or {}).get(RERANK_FAILED_KEY) is True for p in points)


# --- arguments ------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "arguments",
    [{"limit": -1}, {"offset": -2}, {"window": 0}, {"limit": True}, {"score_threshold": float("nan")}],
)
def test_bad_call_arguments_are_refused(client: QdrantClient, arguments: dict[str, Any]) -> None:
    with pytest.raises(InvalidInputError):
        QdrantReranker(client, table_reranker()).query_points(COLLECTION, rerank_query="q", **arguments)


def test_bad_construction_is_refused(client: QdrantClient) -> None:
    with pytest.raises(InvalidInputError, match="not a single string"):
        QdrantReranker(client, table_reranker(), text_fields="text")
    with pytest.raises(InvalidInputError, match="nothing to rerank by"):
        QdrantReranker(client, table_reranker(), text_fields=[], image_fields=[])
    with pytest.raises(InvalidInputError, match="window"):
        QdrantReranker(client, table_reranker(), window=0)
    with pytest.raises(TypeError, match="AsyncQdrantReranker"):
        QdrantReranker(AsyncQdrantClient(":memory:"), table_reranker())  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="with_payload"):
        QdrantReranker(client, table_reranker()).query_points(COLLECTION, rerank_query="q", with_payload="text")


def test_a_url_means_the_remote_reranker(client: QdrantClient) -> None:
    from lychee_rerank.core.remote import RemoteReranker

    assert isinstance(QdrantReranker(client, "http://127.0.0.1:9").reranker, RemoteReranker)


# --- images ---------------------------------------------------------------------------------------------


def _image_collection(client: QdrantClient, image_files: list[Path]) -> dict[int, dict[str, Any]]:
    data_uri = "data:image/png;base64," + base64.b64encode(image_files[2].read_bytes()).decode()
    payloads: dict[int, dict[str, Any]] = {
        0: {"text": "a striped shirt"},
        1: {"image_path": str(image_files[0])},
        2: {"text": "a chart of revenue", "image_base64": base64.b64encode(image_files[1].read_bytes()).decode()},
        3: {"image": data_uri, "text": "  "},
        4: {"image_url": "https://example.com/shirt.png", "text": "remote shirt"},
    }
    client.create_collection("images", vectors_config=models.VectorParams(size=2, distance=models.Distance.DOT))
    client.upsert(
        "images",
        points=[models.PointStruct(id=i, vector=[1.0, float(5 - i)], payload=p) for i, p in payloads.items()],
    )
    return payloads


def test_image_payload_fields_become_document_images(client: QdrantClient, image_files: list[Path]) -> None:
    payloads = _image_collection(client, image_files)
    stub = table_reranker()
    QdrantReranker(client, stub).query_points("images", rerank_query="shirt", query=[1.0, 1.0], limit=5)
    documents = stub.calls[0][1]
    assert documents == [
        Document(text="a striped shirt"),
        Document(image=str(image_files[0])),
        Document(text="a chart of revenue", image=payloads[2]["image_base64"]),
        Document(image=payloads[3]["image"]),
        Document(text="remote shirt", image="https://example.com/shirt.png"),
    ]


def test_rerank_scores_equal_the_reranker_on_the_same_payloads(
    client: QdrantClient, tiny_reranker: LocalReranker, image_files: list[Path]
) -> None:
    payloads = _image_collection(client, image_files)
    local = {i: p for i, p in payloads.items() if i < 4}  # the tiny model does not fetch the URL
    response = QdrantReranker(client, tiny_reranker).query_points(
        "images",
        rerank_query={"text": "a shirt", "image": str(image_files[3])},
        query=[1.0, 1.0],
        query_filter=models.Filter(must=[models.HasIdCondition(has_id=list(local))]),
        limit=4,
    )
    expected = tiny_reranker.score(
        {"text": "a shirt", "image": str(image_files[3])},
        [
            Document(text="a striped shirt"),
            Document(image=str(image_files[0])),
            Document(text="a chart of revenue", image=payloads[2]["image_base64"]),
            Document(image=payloads[3]["image"]),
        ],
    )
    got = {p.id: p.score for p in response.points}
    assert got == pytest.approx(dict(enumerate(expected)), abs=1e-5)
    assert [p.score for p in response.points] == sorted(got.values(), reverse=True)


# --- backends: path=, async ------------------------------------------------------------------------------


def test_embedded_path_client_gives_the_same_answer_as_memory(client: QdrantClient, tmp_path: Path) -> None:
    on_disk = QdrantClient(path=str(tmp_path / "qdrant"))
    try:
        _fill(on_disk)
        memory = QdrantReranker(client, table_reranker()).query_points(COLLECTION, rerank_query="q", limit=5, **HYBRID)
        disk = QdrantReranker(on_disk, table_reranker()).query_points(COLLECTION, rerank_query="q", limit=5, **HYBRID)
    finally:
        on_disk.close()
    assert [(p.id, p.score, p.payload) for p in disk.points] == [(p.id, p.score, p.payload) for p in memory.points]


def _async_client() -> AsyncQdrantClient:
    return AsyncQdrantClient(":memory:")


async def _fill_async(client: AsyncQdrantClient) -> None:
    await client.create_collection(
        COLLECTION,
        vectors_config={"dense": models.VectorParams(size=4, distance=models.Distance.COSINE)},
        sparse_vectors_config={"sparse": models.SparseVectorParams()},
    )
    await client.upsert(
        COLLECTION,
        points=[
            models.PointStruct(
                id=index,
                vector={"dense": _dense(index), "sparse": _sparse(index)},
                payload={"text": text, "category": "x", "meta": {"caption": text, "sku": str(index)}},
            )
            for index, text in enumerate(TEXTS)
        ],
    )


async def test_async_client_gives_the_same_order_and_scores_as_sync(client: QdrantClient) -> None:
    expected = QdrantReranker(client, table_reranker()).query_points(
        COLLECTION, rerank_query="q", limit=4, offset=1, with_payload=["category"], **HYBRID
    )
    async_client = _async_client()
    try:
        await _fill_async(async_client)
        stub = table_reranker()
        got = await AsyncQdrantReranker(async_client, stub).query_points(
            COLLECTION, rerank_query="q", limit=4, offset=1, with_payload=["category"], **HYBRID
        )
    finally:
        await async_client.close()
    assert [(p.id, p.score) for p in got.points] == [(p.id, p.score) for p in expected.points]
    assert [p.payload[FIRST_STAGE_SCORE_KEY] for p in got.points] == [  # type: ignore[index]
        p.payload[FIRST_STAGE_SCORE_KEY]  # type: ignore[index]
        for p in expected.points
    ]
    assert all(set(p.payload or {}) == {"category", FIRST_STAGE_SCORE_KEY} for p in got.points)


async def test_async_fail_open_and_fail_closed() -> None:
    async_client = _async_client()
    try:
        await _fill_async(async_client)
        failing = table_reranker(error=OSError("connection reset"))
        points = (
            await AsyncQdrantReranker(async_client, failing).query_points(
                COLLECTION, rerank_query="q", limit=2, **HYBRID
            )
        ).points
        assert [(p.payload or {}).get(RERANK_FAILED_KEY) for p in points] == [True, True]
        with pytest.raises(OSError, match="connection reset"):
            await AsyncQdrantReranker(async_client, failing, fail_open=False).query_points(
                COLLECTION, rerank_query="q", **HYBRID
            )
    finally:
        await async_client.close()


async def test_async_reranking_does_not_block_the_event_loop() -> None:
    class SlowAsyncReranker(TableReranker):
        async def arerank(self, *args: Any, **kwargs: Any) -> Any:
            await asyncio.sleep(0.2)
            return await super().arerank(*args, **kwargs)

    async_client = _async_client()
    ticks = 0

    async def tick() -> None:
        nonlocal ticks
        while True:
            await asyncio.sleep(0.01)
            ticks += 1

    try:
        await _fill_async(async_client)
        ticker = asyncio.create_task(tick())
        await AsyncQdrantReranker(async_client, SlowAsyncReranker(STUB_SCORES, default=0.0)).query_points(
            COLLECTION, rerank_query="q", **HYBRID
        )
        ticker.cancel()
    finally:
        await async_client.close()
    assert ticks >= 5


def test_async_reranker_refuses_a_sync_client(client: QdrantClient) -> None:
    with pytest.raises(TypeError, match="QdrantReranker"):
        AsyncQdrantReranker(client, table_reranker())  # type: ignore[arg-type]


# --- the example ----------------------------------------------------------------------------------------


@pytest.mark.parametrize("location", [":memory:", "folder"])
def test_hybrid_example_runs_offline_and_reranks_the_fused_window(
    location: str, tiny_model_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    import importlib.util
    import re

    path = Path(__file__).resolve().parent.parent / "examples" / "qdrant_hybrid_rerank.py"
    spec = importlib.util.spec_from_file_location("lychee_example_qdrant_hybrid_rerank", path)
    assert spec is not None
    assert spec.loader is not None
    example = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(example)
    qdrant = ":memory:" if location == ":memory:" else str(tmp_path / "qdrant")
    arguments = ["--qdrant", qdrant, "--model", str(tiny_model_dir), "--device", "cpu", "--kind", "product"]
    status = example.main([*arguments, "--window", "8", "--limit", "3", "--corpus", str(tmp_path / "corpus")])
    output = capsys.readouterr().out
    assert status == 0
    first_stage, reranked = output.split("reranked by description and photo")
    row = re.compile(r"^\s+\d+\s+(\d\.\d{4})\s+(p\d+)\s+(.+?)\s+\[RRF (\d\.\d{3})\]$", re.MULTILINE)
    rows = row.findall(reranked)
    assert len(rows) == 3
    scores = [float(score) for score, _, _, _ in rows]
    assert scores == sorted(scores, reverse=True)
    first_ids = re.findall(r"^\s+\d+\s+\d\.\d{4}\s+(p\d+)\s", first_stage, re.MULTILINE)
    assert len(first_ids) == 8
    assert {name for _, name, _, _ in rows} <= set(first_ids)


def test_an_image_field_holding_an_object_is_refused_naming_the_point_and_field(client: QdrantClient) -> None:
    with pytest.raises(InvalidInputError, match=r"point \d+: image field 'meta'"):
        QdrantReranker(client, table_reranker(), image_fields=["meta"]).query_points(
            COLLECTION, rerank_query="q", limit=1, **HYBRID
        )


def test_excluding_part_of_a_list_field_read_for_reranking() -> None:
    qdrant = QdrantClient(":memory:")
    qdrant.create_collection("reviews", vectors_config=models.VectorParams(size=2, distance=models.Distance.DOT))
    payload = {"reviews": ["great shirt", "too small"], "notes": [{"by": "ann", "secret": "x"}], "title": "shirt"}
    qdrant.upsert("reviews", points=[models.PointStruct(id=1, vector=[1.0, 0.0], payload=payload)])
    stub = table_reranker({"great shirt\ntoo small": 0.5})
    selector = models.PayloadSelectorExclude(exclude=["reviews[0]", "notes[].secret"])
    reranker = QdrantReranker(qdrant, stub, text_fields=["reviews"], image_fields=[], first_stage_score_key=None)
    [point] = reranker.query_points("reviews", rerank_query="q", query=[1.0, 0.0], with_payload=selector).points
    assert point.score == 0.5  # the whole list was read
    assert point.payload == {"reviews": ["too small"], "notes": [{"by": "ann"}], "title": "shirt"}
    assert payload["reviews"] == ["great shirt", "too small"]
