"""The second stage shared by the framework adapters: fields to documents, selection, fail-open."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Sequence
from pathlib import Path

import httpx
import pytest
from PIL import Image

from lychee_rerank.adapters._second_stage import IMAGE_KEYS, Pick, SecondStage, document_from_fields, query_from_fields
from lychee_rerank.core import Document, InvalidInputError, LocalReranker, LycheeError, Query
from lychee_rerank.core.inputs import DocumentLike, QueryLike
from lychee_rerank.core.interface import BaseReranker, RerankResult
from lychee_rerank.core.testing.fakes import FailingReranker, SlowReranker


class AsyncOnlyReranker(BaseReranker):
    """Sync scoring is refused, so a result proves the async path awaited ``arerank``."""

    def __init__(self, inner: LocalReranker) -> None:
        self.inner = inner

    def score(
        self, query: QueryLike, documents: Sequence[DocumentLike], *, instruction: str | None = None
    ) -> list[float]:
        raise AssertionError("the async path must not call the sync scorer")

    async def arerank(
        self,
        query: QueryLike,
        documents: Sequence[DocumentLike],
        *,
        top_n: int | None = None,
        instruction: str | None = None,
        min_score: float | None = None,
    ) -> list[RerankResult]:
        return await self.inner.arerank(query, documents, top_n=top_n, instruction=instruction, min_score=min_score)


DOCUMENTS = [Document("a red dress"), Document("a blue car"), Document("red shoes"), Document("a lamp")]


def test_document_from_fields_takes_text_and_the_first_non_empty_image_key() -> None:
    assert document_from_fields("plain text", {"source": "x"}) == Document(text="plain text")
    fields = {"image": "", "image_path": "b.png", "image_url": "https://example.com/c.png"}
    assert document_from_fields("caption", fields) == Document(text="caption", image="b.png")
    assert IMAGE_KEYS == ("image", "image_path", "image_url", "image_base64")


def test_blank_text_beside_an_image_is_an_image_only_document() -> None:
    assert document_from_fields("  ", {"image_base64": "aGVsbG8="}) == Document(image="aGVsbG8=")
    assert query_from_fields("", "cat.png") == Query(image="cat.png")
    assert query_from_fields("cats", None) == Query(text="cats")


def test_custom_image_keys_replace_the_default_ones() -> None:
    fields = {"image_path": "ignored.png", "thumbnail": "thumb.png"}
    assert document_from_fields("t", fields, ("thumbnail",)) == Document(text="t", image="thumb.png")


def test_pil_images_pass_through_unchanged() -> None:
    picture = Image.new("RGB", (4, 4))
    assert document_from_fields("", {"image": picture}).image is picture


def test_an_image_field_that_is_not_an_image_names_the_key() -> None:
    with pytest.raises(InvalidInputError, match="image_url"):
        document_from_fields("t", {"image_url": 42})


def test_run_matches_the_rerankers_scores_with_top_n_and_threshold(tiny_reranker: LocalReranker) -> None:
    query = Query("red dress")
    scores = tiny_reranker.score(query, DOCUMENTS, instruction="ecommerce")
    threshold = sorted(scores)[1]  # keeps three of the four
    selection = SecondStage(tiny_reranker, top_n=2, score_threshold=threshold, instruction="ecommerce").run(
        query, DOCUMENTS
    )
    expected = sorted(range(len(scores)), key=lambda i: (-scores[i], i))[:2]
    assert [pick.index for pick in selection.picks] == expected
    assert [pick.score for pick in selection.picks] == pytest.approx([scores[i] for i in expected], abs=1e-6)
    assert not selection.failed
    cut = SecondStage(tiny_reranker, score_threshold=threshold, instruction="ecommerce").run(query, DOCUMENTS)
    assert sorted(pick.index for pick in cut.picks) == sorted(i for i, s in enumerate(scores) if s >= threshold)


async def test_arun_awaits_arerank_and_gives_the_same_picks(tiny_reranker: LocalReranker) -> None:
    stage = SecondStage(tiny_reranker, top_n=3)
    expected = stage.run(Query("red"), DOCUMENTS)
    assert await SecondStage(AsyncOnlyReranker(tiny_reranker), top_n=3).arun(Query("red"), DOCUMENTS) == expected


async def test_empty_input_returns_at_once_without_calling_the_reranker() -> None:
    reranker = FailingReranker(AssertionError("called"))
    assert SecondStage(reranker, fail_open=False).run(Query("q"), []).picks == ()
    assert (await SecondStage(reranker, fail_open=False).arun(Query("q"), [])).picks == ()
    assert reranker.calls == 0


@pytest.mark.parametrize(
    "error",
    [ConnectionError("refused"), httpx.ConnectError("refused"), TimeoutError("slow"), LycheeError("service down")],
)
async def test_reranker_failures_fall_back_to_the_first_stage_order(
    error: BaseException, caplog: pytest.LogCaptureFixture
) -> None:
    stage = SecondStage(FailingReranker(error), top_n=3, score_threshold=0.9)
    with caplog.at_level(logging.WARNING, logger="lychee_rerank.adapters._second_stage"):
        selection = stage.run(Query("q"), DOCUMENTS)
    assert selection.picks == (Pick(0, None), Pick(1, None), Pick(2, None))
    assert selection.failed
    assert selection.error is not None
    assert type(error).__name__ in selection.error
    assert "first-stage order" in caplog.text
    assert type(error).__name__ in caplog.text
    assert await stage.arun(Query("q"), DOCUMENTS) == selection


async def test_fail_closed_raises_the_rerankers_error() -> None:
    stage = SecondStage(FailingReranker(ConnectionError("refused")), fail_open=False)
    with pytest.raises(ConnectionError, match="refused"):
        stage.run(Query("q"), DOCUMENTS)
    with pytest.raises(ConnectionError, match="refused"):
        await stage.arun(Query("q"), DOCUMENTS)


@pytest.mark.parametrize("error", [InvalidInputError("document 2: bad image"), TypeError("a bug")])
async def test_invalid_input_and_programming_errors_raise_even_when_failing_open(error: Exception) -> None:
    stage = SecondStage(FailingReranker(error), fail_open=True)
    with pytest.raises(type(error)):
        stage.run(Query("q"), DOCUMENTS)
    with pytest.raises(type(error)):
        await stage.arun(Query("q"), DOCUMENTS)


def test_a_slow_reranker_past_timeout_s_falls_back_in_the_sync_path() -> None:
    started = time.monotonic()
    selection = SecondStage(SlowReranker(1.0), top_n=2, timeout_s=0.05).run(Query("q"), DOCUMENTS)
    assert time.monotonic() - started < 0.8
    assert selection.failed
    assert selection.picks == (Pick(0, None), Pick(1, None))
    assert selection.error is not None
    assert "timeout_s" in selection.error


async def test_a_slow_reranker_past_timeout_s_falls_back_without_blocking_the_loop() -> None:
    ticks = 0

    async def ticker() -> None:
        nonlocal ticks
        while True:
            ticks += 1
            await asyncio.sleep(0.005)

    task = asyncio.create_task(ticker())
    started = time.monotonic()
    selection = await SecondStage(SlowReranker(5.0), top_n=1, timeout_s=0.1).arun(Query("q"), DOCUMENTS)
    task.cancel()
    assert time.monotonic() - started < 2.0
    assert selection.failed
    assert selection.picks == (Pick(0, None),)
    assert ticks >= 5  # the loop kept running while the reranker was awaited


async def test_timeout_with_fail_closed_raises_timeout_error() -> None:
    with pytest.raises(TimeoutError, match="timeout_s"):
        await SecondStage(SlowReranker(5.0), timeout_s=0.05, fail_open=False).arun(Query("q"), DOCUMENTS)


def test_image_documents_score_like_the_reranker(tiny_reranker: LocalReranker, image_files: list[Path]) -> None:
    documents = [
        document_from_fields("", {"image_path": str(image_files[0])}),
        document_from_fields("a caption", {"image": str(image_files[1])}),
        document_from_fields("text only", {}),
    ]
    scores = tiny_reranker.score("a picture", documents)
    picks = SecondStage(tiny_reranker).run(Query("a picture"), documents).picks
    assert {pick.index: pick.score for pick in picks} == pytest.approx(dict(enumerate(scores)), abs=1e-6)


def remote_reranker(status: int, body: dict[str, object]) -> BaseReranker:
    """A real RemoteReranker whose HTTP transport answers ``status`` with ``body`` (sync and async)."""
    remote = pytest.importorskip("lychee_rerank.core.remote", reason="core/remote.py (RemoteReranker) not built")

    def answer(request: httpx.Request) -> httpx.Response:
        return httpx.Response(status, json=body)

    reranker: BaseReranker = remote.RemoteReranker(
        "http://127.0.0.1:9",
        max_retries=0,
        transport=httpx.MockTransport(answer),
        async_transport=httpx.MockTransport(answer),
    )
    return reranker


async def test_an_unreachable_service_fails_open() -> None:
    remote = pytest.importorskip("lychee_rerank.core.remote", reason="core/remote.py (RemoteReranker) not built")
    stage = SecondStage(remote.RemoteReranker("http://127.0.0.1:9", max_retries=0, timeout=2.0), top_n=2)
    selection = stage.run(Query("q"), DOCUMENTS)
    assert selection.failed
    assert selection.picks == (Pick(0, None), Pick(1, None))
    assert (await stage.arun(Query("q"), DOCUMENTS)).failed


async def test_a_failing_service_fails_open_but_a_refused_input_raises() -> None:
    overloaded = SecondStage(remote_reranker(503, {"error": {"message": "overloaded"}}), top_n=1)
    assert overloaded.run(Query("q"), DOCUMENTS).failed
    assert (await overloaded.arun(Query("q"), DOCUMENTS)).failed
    refused = SecondStage(remote_reranker(422, {"error": {"message": "document 1: bad image"}}), fail_open=True)
    with pytest.raises(InvalidInputError):
        refused.run(Query("q"), DOCUMENTS)
    with pytest.raises(InvalidInputError):
        await refused.arun(Query("q"), DOCUMENTS)
