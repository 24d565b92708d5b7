"""The LangChain compressor with the real langchain-core: retrievers, LCEL, images, fail-open."""

from __future__ import annotations

import asyncio
import base64
import copy
import importlib
import logging
import sys
import time
from collections.abc import Sequence
from pathlib import Path

import pytest
from PIL import Image

pytest.importorskip("langchain_core", reason="langchain-core is not installed (the 'langchain' extra)")

from langchain_core.callbacks import CallbackManagerForRetrieverRun
from langchain_core.documents import Document as LangChainDocument
from langchain_core.retrievers import BaseRetriever
from langchain_core.runnables import RunnableLambda, RunnablePassthrough
from pydantic import ValidationError

from lychee_rerank.adapters.langchain import RERANK_ERROR_KEY, RERANK_FAILED_KEY, LycheeRerank
from lychee_rerank.core import Document, ImageError, LocalReranker, Query, RemoteReranker
from lychee_rerank.core.testing.fakes import FailingReranker, SlowReranker
from lychee_rerank.core.testing.servers import LoopbackServer, Reply


class ListRetriever(BaseRetriever):
    """A first stage over an in-memory list: every document, in list order."""

    documents: list[LangChainDocument]

    def _get_relevant_documents(
        self, query: str, *, run_manager: CallbackManagerForRetrieverRun
    ) -> list[LangChainDocument]:
        return list(self.documents)


@pytest.fixture
def documents(image_files: list[Path]) -> list[LangChainDocument]:
    """Text and image documents mixed, each with metadata of its own."""
    encoded = base64.b64encode(image_files[2].read_bytes()).decode()
    return [
        LangChainDocument("a red summer dress", metadata={"source": "catalogue", "sku": 1}, id="d0"),
        LangChainDocument("", metadata={"image_path": str(image_files[0]), "sku": 2}, id="d1"),
        LangChainDocument("a blue sports car", metadata={"sku": 3}),
        LangChainDocument("photo of shoes", metadata={"image_base64": encoded, "sku": 4}),
        LangChainDocument("", metadata={"image": Image.open(image_files[1]), "sku": 5}),
    ]


def as_core(documents: list[LangChainDocument], image_files: list[Path]) -> list[Document]:
    """The same documents written directly as core Documents, independent of the adapter."""
    encoded = base64.b64encode(image_files[2].read_bytes()).decode()
    return [
        Document(text="a red summer dress"),
        Document(image=str(image_files[0])),
        Document(text="a blue sports car"),
        Document(text="photo of shoes", image=encoded),
        Document(image=documents[4].metadata["image"]),
    ]


def assert_same_ranking(got: Sequence[LangChainDocument], expected: Sequence[LangChainDocument]) -> None:
    """Same documents in the same order, same scores up to float noise between sync and async runs."""
    assert [d.metadata["sku"] for d in got] == [d.metadata["sku"] for d in expected]
    assert [d.metadata["relevance_score"] for d in got] == pytest.approx(
        [d.metadata["relevance_score"] for d in expected], abs=1e-6
    )


def test_fields_are_documented_and_unknown_ones_refused(tiny_reranker: LocalReranker) -> None:
    fields = LycheeRerank.model_fields
    assert {"reranker", "top_n", "score_threshold", "instruction", "image_keys", "query_image"} <= set(fields)
    assert {"fail_open", "timeout_s"} <= set(fields)
    assert all(field.description for field in fields.values())
    with pytest.raises(ValidationError, match="top_k"):
        LycheeRerank(reranker=tiny_reranker, top_k=3)  # type: ignore[call-arg]
    with pytest.raises(ValidationError):
        LycheeRerank(reranker=tiny_reranker, top_n=-1)
    with pytest.raises(ValidationError):
        LycheeRerank(reranker=tiny_reranker, score_threshold=50)
    with pytest.raises(TypeError, match="Reranker"):
        LycheeRerank(reranker=object())  # type: ignore[arg-type]


def test_a_url_string_means_a_remote_reranker() -> None:
    remote = pytest.importorskip("lychee_rerank.core.remote", reason="core/remote.py (RemoteReranker) not built yet")
    assert isinstance(LycheeRerank(reranker="http://127.0.0.1:9").reranker, remote.RemoteReranker)


def test_scores_equal_local_reranker_scores_for_text_and_images(
    tiny_reranker: LocalReranker, documents: list[LangChainDocument], image_files: list[Path]
) -> None:
    expected = tiny_reranker.score(Query("summer dress"), as_core(documents, image_files), instruction="ecommerce")
    compressor = LycheeRerank(reranker=tiny_reranker, top_n=None, instruction="ecommerce")
    kept = compressor.compress_documents(documents, "summer dress")
    assert len(kept) == len(documents)
    by_sku = {document.metadata["sku"]: document.metadata["relevance_score"] for document in kept}
    assert by_sku == pytest.approx({index + 1: score for index, score in enumerate(expected)}, abs=1e-6)
    scores = [document.metadata["relevance_score"] for document in kept]
    assert scores == sorted(scores, reverse=True)


def test_top_n_and_score_threshold_cut_the_list(
    tiny_reranker: LocalReranker, documents: list[LangChainDocument]
) -> None:
    everything = LycheeRerank(reranker=tiny_reranker, top_n=None).compress_documents(documents, "dress")
    scores = [document.metadata["relevance_score"] for document in everything]
    assert len(LycheeRerank(reranker=tiny_reranker, top_n=2).compress_documents(documents, "dress")) == 2
    threshold = scores[2]  # three documents score at least this
    cut = LycheeRerank(reranker=tiny_reranker, top_n=None, score_threshold=threshold).compress_documents(
        documents, "dress"
    )
    assert [document.metadata["sku"] for document in cut] == [document.metadata["sku"] for document in everything[:3]]
    assert all(document.metadata["relevance_score"] >= threshold for document in cut)


def test_returns_copies_keeping_metadata_and_leaves_inputs_untouched(
    tiny_reranker: LocalReranker, documents: list[LangChainDocument]
) -> None:
    text_only = [documents[0], documents[2]]
    before = copy.deepcopy(text_only)
    kept = LycheeRerank(reranker=tiny_reranker, top_n=None).compress_documents(text_only, "dress")
    assert text_only == before
    assert all("relevance_score" not in document.metadata for document in text_only)
    first = next(document for document in kept if document.metadata["sku"] == 1)
    assert first is not documents[0]
    assert first.id == "d0"
    assert first.page_content == "a red summer dress"
    assert {key: value for key, value in first.metadata.items() if key != "relevance_score"} == {
        "source": "catalogue",
        "sku": 1,
    }


def test_query_image_from_the_field_or_the_call(
    tiny_reranker: LocalReranker, documents: list[LangChainDocument], image_files: list[Path]
) -> None:
    text_documents = [documents[0], documents[2]]
    core = [Document("a red summer dress"), Document("a blue sports car")]
    with_first = tiny_reranker.score(Query("like this", image=str(image_files[3])), core)
    with_second = tiny_reranker.score(Query(image=str(image_files[4])), core)
    compressor = LycheeRerank(reranker=tiny_reranker, top_n=None, query_image=str(image_files[3]))
    by_field = compressor.compress_documents(text_documents, "like this")
    assert {d.metadata["sku"]: d.metadata["relevance_score"] for d in by_field} == pytest.approx(
        {1: with_first[0], 3: with_first[1]}, abs=1e-6
    )
    by_call = compressor.compress_documents(text_documents, "", query_image=str(image_files[4]))
    assert {d.metadata["sku"]: d.metadata["relevance_score"] for d in by_call} == pytest.approx(
        {1: with_second[0], 3: with_second[1]}, abs=1e-6
    )


def test_custom_image_keys(tiny_reranker: LocalReranker, image_files: list[Path]) -> None:
    document = LangChainDocument("", metadata={"thumbnail": str(image_files[5])})
    expected = tiny_reranker.score("shoes", [Document(image=str(image_files[5]))])
    kept = LycheeRerank(reranker=tiny_reranker, image_keys=("thumbnail",)).compress_documents([document], "shoes")
    assert kept[0].metadata["relevance_score"] == pytest.approx(expected[0], abs=1e-6)


async def test_empty_input_returns_empty_without_calling_the_reranker() -> None:
    reranker = FailingReranker(AssertionError("must not be called"))
    compressor = LycheeRerank(reranker=reranker, fail_open=False)
    assert list(compressor.compress_documents([], "q")) == []
    assert list(await compressor.acompress_documents([], "q")) == []
    assert reranker.calls == 0


async def test_a_failing_reranker_keeps_the_first_stage_order_flagged_and_logged(
    documents: list[LangChainDocument], caplog: pytest.LogCaptureFixture
) -> None:
    compressor = LycheeRerank(reranker=FailingReranker(ConnectionError("connection refused")), top_n=2)
    with caplog.at_level(logging.WARNING):
        kept = compressor.compress_documents(documents, "dress")
    assert [document.metadata["sku"] for document in kept] == [1, 2]
    assert all(document.metadata["rerank_failed"] is True for document in kept)
    assert all("relevance_score" not in document.metadata for document in kept)
    assert "connection refused" in caplog.text
    assert "rerank_failed" not in documents[0].metadata
    assert [d.metadata for d in await compressor.acompress_documents(documents, "dress")] == [d.metadata for d in kept]


async def test_fail_closed_raises() -> None:
    compressor = LycheeRerank(reranker=FailingReranker(ConnectionError("refused")), fail_open=False)
    with pytest.raises(ConnectionError):
        compressor.compress_documents([LangChainDocument("x")], "q")
    with pytest.raises(ConnectionError):
        await compressor.acompress_documents([LangChainDocument("x")], "q")


def test_a_bad_image_in_the_callers_documents_raises_even_when_failing_open(
    tiny_reranker: LocalReranker, tmp_path: Path
) -> None:
    broken = LangChainDocument("", metadata={"image_path": str(tmp_path / "missing.png")})
    with pytest.raises(ImageError):
        LycheeRerank(reranker=tiny_reranker, fail_open=True).compress_documents([broken], "q")


async def test_acompress_documents_matches_the_sync_scores(
    tiny_reranker: LocalReranker, documents: list[LangChainDocument]
) -> None:
    compressor = LycheeRerank(reranker=tiny_reranker, top_n=4)
    sync = compressor.compress_documents(documents, "dress")
    assert_same_ranking(await compressor.acompress_documents(documents, "dress"), sync)


async def test_acompress_documents_does_not_block_and_honours_timeout_s(documents: list[LangChainDocument]) -> None:
    ticks = 0

    async def ticker() -> None:
        nonlocal ticks
        while True:
            ticks += 1
            await asyncio.sleep(0.005)

    task = asyncio.create_task(ticker())
    kept = await LycheeRerank(reranker=SlowReranker(0.3), top_n=None).acompress_documents(documents, "q")
    assert ticks >= 10
    assert [document.metadata["relevance_score"] for document in kept] == [0.5] * len(documents)
    started = time.monotonic()
    late = await LycheeRerank(reranker=SlowReranker(5.0), top_n=1, timeout_s=0.05).acompress_documents(documents, "q")
    task.cancel()
    assert time.monotonic() - started < 2.0
    assert [document.metadata["rerank_failed"] for document in late] == [True]


async def test_composes_with_a_retriever_in_lcel(
    tiny_reranker: LocalReranker, documents: list[LangChainDocument]
) -> None:
    retriever = ListRetriever(documents=documents)
    compressor = LycheeRerank(reranker=tiny_reranker, top_n=3)
    chain = {"documents": retriever, "query": RunnablePassthrough()} | compressor.as_runnable()
    expected = compressor.compress_documents(documents, "dress")
    assert [d.metadata for d in chain.invoke("dress")] == [d.metadata for d in expected]
    assert_same_ranking(await chain.ainvoke("dress"), expected)
    piped = retriever | RunnableLambda(lambda found: compressor.compress_documents(found, "dress"))
    assert [d.metadata for d in piped.invoke("dress")] == [d.metadata for d in expected]


def test_works_as_the_base_compressor_of_contextual_compression_retriever(
    tiny_reranker: LocalReranker, documents: list[LangChainDocument]
) -> None:
    try:
        from langchain_classic.retrievers import ContextualCompressionRetriever
    except ImportError:
        try:  # LangChain before 1.0 kept it in the `langchain` package
            from langchain.retrievers import ContextualCompressionRetriever  # type: ignore[no-redef]
        except ImportError:
            pytest.skip(
                "ContextualCompressionRetriever is in the langchain-classic package (LangChain 1.x), "
                "which is not installed (pip install langchain-classic)"
            )
    compressor = LycheeRerank(reranker=tiny_reranker, top_n=2)
    retriever = ContextualCompressionRetriever(
        base_compressor=compressor, base_retriever=ListRetriever(documents=documents)
    )
    expected = compressor.compress_documents(documents, "dress")
    assert [d.metadata for d in retriever.invoke("dress")] == [d.metadata for d in expected]


def test_importing_without_langchain_names_the_extra(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "langchain_core", None)
    monkeypatch.delitem(sys.modules, "lychee_rerank.adapters.langchain")
    with pytest.raises(ImportError, match=r"lychee-rerank\[langchain\]"):
        importlib.import_module("lychee_rerank.adapters.langchain")


def refusing_service() -> LoopbackServer:
    """A loopback server answering every request 401, as the service does for a wrong API key."""
    body = {"error": {"type": "unauthorized", "message": "missing or wrong API key", "status": 401}}
    return LoopbackServer(lambda number, request: Reply.json(401, body))


async def test_a_refused_api_key_is_reported_in_the_metadata_and_logged_as_an_error(
    documents: list[LangChainDocument], caplog: pytest.LogCaptureFixture
) -> None:
    with refusing_service() as server, caplog.at_level(logging.WARNING):
        compressor = LycheeRerank(reranker=RemoteReranker(server.url, api_key="wrong"), top_n=2)
        kept = compressor.compress_documents(documents, "dress")
        asynchronous = await compressor.acompress_documents(documents, "dress")
    assert [document.metadata["sku"] for document in kept] == [1, 2]
    for document in [*kept, *asynchronous]:
        assert document.metadata[RERANK_FAILED_KEY] is True
        assert document.metadata[RERANK_ERROR_KEY].startswith("RemoteAuthError:")
        assert "LYCHEE_API_KEY" in document.metadata[RERANK_ERROR_KEY]
    assert {record.levelno for record in caplog.records} == {logging.ERROR}


async def test_timeout_s_against_a_service_that_never_answers_fails_open_in_time(
    documents: list[LangChainDocument],
) -> None:
    with LoopbackServer(lambda number, request: None) as server:
        compressor = LycheeRerank(reranker=server.url, top_n=1, timeout_s=0.5)
        started = time.monotonic()
        kept = compressor.compress_documents(documents, "dress")
        late = await compressor.acompress_documents(documents, "dress")
        assert time.monotonic() - started <= 2 * 0.5 + 1.0  # a correctness bound with wide slack
    assert [document.metadata[RERANK_FAILED_KEY] for document in [*kept, *late]] == [True, True]
    assert "did not answer within timeout=0.5 s" in kept[0].metadata[RERANK_ERROR_KEY]
