"""The LlamaIndex postprocessor with the real llama-index-core: a vector index, query engines, images."""

from __future__ import annotations

import asyncio
import base64
import copy
import importlib
import logging
import sys
import time
from pathlib import Path

import pytest

pytest.importorskip("llama_index.core", reason="llama-index-core is not installed (the 'llamaindex' extra)")

from llama_index.core import MockEmbedding, VectorStoreIndex
from llama_index.core.llms import MockLLM
from llama_index.core.schema import ImageNode, MetadataMode, NodeWithScore, QueryBundle, TextNode
from pydantic import ValidationError

from lychee_rerank.adapters.llamaindex import RERANK_ERROR_KEY, RERANK_FAILED_KEY, LycheeRerank
from lychee_rerank.core import Document, ImageError, InvalidInputError, LocalReranker, Query, RemoteReranker
from lychee_rerank.core.testing.fakes import FailingReranker, SlowReranker
from lychee_rerank.core.testing.servers import LoopbackServer, Reply


@pytest.fixture
def nodes(image_files: list[Path]) -> list[TextNode]:
    """Text and image nodes mixed: an ImageNode per image field, and text nodes with metadata."""
    return [
        TextNode(text="a red summer dress", id_="text-dress", metadata={"source": "catalogue"}),
        ImageNode(image_path=str(image_files[0]), id_="image-path"),
        TextNode(text="a blue sports car", id_="text-car"),
        ImageNode(image=base64.b64encode(image_files[1].read_bytes()).decode(), text="shoes", id_="image-base64"),
        ImageNode(image_url=str(image_files[2]), id_="image-url"),  # a local path in the URL field: no network
    ]


def expected_scores(
    reranker: LocalReranker,
    nodes: list[TextNode],
    image_files: list[Path],
    query: Query,
    instruction: str | None = None,
) -> dict[str, float]:
    """The same nodes written directly as core Documents, scored by the reranker itself."""
    documents = [
        Document("source: catalogue\n\na red summer dress"),  # metadata as the embedding sees it
        Document(image=str(image_files[0])),
        Document("a blue sports car"),
        Document("shoes", image=base64.b64encode(image_files[1].read_bytes()).decode()),
        Document(image=str(image_files[2])),
    ]
    scores = reranker.score(query, documents, instruction=instruction)
    return {node.id_: score for node, score in zip(nodes, scores, strict=True)}


def with_scores(nodes: list[TextNode], score: float = 0.5) -> list[NodeWithScore]:
    """The first stage's answer: every node, descending retrieval scores."""
    return [NodeWithScore(node=node, score=score - index / 100) for index, node in enumerate(nodes)]


def test_fields_are_documented_and_unknown_ones_refused(tiny_reranker: LocalReranker) -> None:
    fields = LycheeRerank.model_fields
    assert {"reranker", "top_n", "score_threshold", "instruction", "keep_retrieval_score"} <= set(fields)
    assert {"fail_open", "timeout_s", "metadata_mode"} <= set(fields)
    assert all(fields[name].description for name in fields if name != "callback_manager")
    with pytest.raises(ValidationError, match="similarity_cutoff"):
        LycheeRerank(reranker=tiny_reranker, similarity_cutoff=0.5)  # type: ignore[call-arg]
    with pytest.raises(ValidationError):
        LycheeRerank(reranker=tiny_reranker, top_n=-2)
    with pytest.raises(TypeError, match="Reranker"):
        LycheeRerank(reranker=42)  # type: ignore[arg-type]
    assert LycheeRerank.class_name() == "LycheeRerank"


def test_a_url_string_means_a_remote_reranker() -> None:
    remote = pytest.importorskip("lychee_rerank.core.remote", reason="core/remote.py (RemoteReranker) not built yet")
    assert isinstance(LycheeRerank(reranker="http://127.0.0.1:9").reranker, remote.RemoteReranker)


def test_scores_equal_local_reranker_scores_for_text_and_image_nodes(
    tiny_reranker: LocalReranker, nodes: list[TextNode], image_files: list[Path]
) -> None:
    expected = expected_scores(tiny_reranker, nodes, image_files, Query("summer dress"), instruction="academic")
    rerank = LycheeRerank(reranker=tiny_reranker, top_n=None, instruction="academic")
    kept = rerank.postprocess_nodes(with_scores(nodes), query_str="summer dress")
    assert {node.node.id_: node.score for node in kept} == pytest.approx(expected, abs=1e-6)
    scores = [node.score for node in kept]
    assert scores == sorted(scores, reverse=True)


def test_query_bundle_image_path_is_the_query_image(
    tiny_reranker: LocalReranker, nodes: list[TextNode], image_files: list[Path]
) -> None:
    query = Query("like this", image=str(image_files[3]))
    expected = expected_scores(tiny_reranker, nodes, image_files, query)
    bundle = QueryBundle("like this", image_path=str(image_files[3]))
    kept = LycheeRerank(reranker=tiny_reranker, top_n=None).postprocess_nodes(with_scores(nodes), bundle)
    assert {node.node.id_: node.score for node in kept} == pytest.approx(expected, abs=1e-6)


def test_in_a_query_engine_over_a_vector_store_index(
    tiny_reranker: LocalReranker, nodes: list[TextNode], image_files: list[Path]
) -> None:
    # A text-only VectorStoreIndex skips nodes without text, so every image node here has a caption.
    captioned = [node if node.text else node.model_copy(update={"text": "a photo"}) for node in nodes]
    index = VectorStoreIndex(captioned, embed_model=MockEmbedding(embed_dim=8))
    rerank = LycheeRerank(reranker=tiny_reranker, top_n=3)
    engine = index.as_query_engine(llm=MockLLM(), similarity_top_k=len(nodes), node_postprocessors=[rerank])
    response = engine.query(QueryBundle("summer dress", image_path=str(image_files[3])))
    documents = [
        Document("source: catalogue\n\na red summer dress"),
        Document("a photo", image=str(image_files[0])),
        Document("a blue sports car"),
        Document("shoes", image=base64.b64encode(image_files[1].read_bytes()).decode()),
        Document("a photo", image=str(image_files[2])),
    ]
    scores = tiny_reranker.score(Query("summer dress", image=str(image_files[3])), documents)
    expected = {node.id_: score for node, score in zip(nodes, scores, strict=True)}
    best = sorted(expected, key=lambda node_id: -expected[node_id])[:3]
    assert [node.node.id_ for node in response.source_nodes] == best
    assert [node.score for node in response.source_nodes] == pytest.approx([expected[i] for i in best], abs=1e-6)


async def test_with_a_retriever_sync_and_async_agree(tiny_reranker: LocalReranker, nodes: list[TextNode]) -> None:
    retriever = VectorStoreIndex(nodes, embed_model=MockEmbedding(embed_dim=8)).as_retriever(similarity_top_k=5)
    found = retriever.retrieve("dress")
    rerank = LycheeRerank(reranker=tiny_reranker, top_n=4)
    sync = rerank.postprocess_nodes(found, query_str="dress")
    asynchronous = await rerank.apostprocess_nodes(await retriever.aretrieve("dress"), query_str="dress")
    assert [node.node.id_ for node in asynchronous] == [node.node.id_ for node in sync]
    assert [node.score for node in asynchronous] == pytest.approx([node.score for node in sync], abs=1e-6)


def test_top_n_and_score_threshold(tiny_reranker: LocalReranker, nodes: list[TextNode]) -> None:
    everything = LycheeRerank(reranker=tiny_reranker, top_n=None).postprocess_nodes(with_scores(nodes), query_str="q")
    assert len(LycheeRerank(reranker=tiny_reranker, top_n=2).postprocess_nodes(with_scores(nodes), query_str="q")) == 2
    threshold = everything[1].score
    assert threshold is not None
    cut = LycheeRerank(reranker=tiny_reranker, top_n=None, score_threshold=threshold).postprocess_nodes(
        with_scores(nodes), query_str="q"
    )
    assert [node.node.id_ for node in cut] == [node.node.id_ for node in everything[:2]]


def test_keep_retrieval_score_copies_nodes_and_leaves_inputs_untouched(
    tiny_reranker: LocalReranker, nodes: list[TextNode]
) -> None:
    first_stage = with_scores(nodes)
    before = copy.deepcopy(first_stage)
    kept = LycheeRerank(reranker=tiny_reranker, top_n=None, keep_retrieval_score=True).postprocess_nodes(
        first_stage, query_str="dress"
    )
    assert [node.node.metadata for node in first_stage] == [node.node.metadata for node in before]
    assert [node.score for node in first_stage] == [node.score for node in before]
    retrieval = {node.node.id_: node.score for node in first_stage}
    for node in kept:
        assert node.node.metadata["retrieval_score"] == retrieval[node.node.id_]
    dress = next(node for node in kept if node.node.id_ == "text-dress")
    assert dress.node.metadata["source"] == "catalogue"
    assert dress.node.get_content(MetadataMode.NONE) == "a red summer dress"
    plain = LycheeRerank(reranker=tiny_reranker, top_n=None).postprocess_nodes(first_stage, query_str="dress")
    assert all("retrieval_score" not in node.node.metadata for node in plain)


async def test_empty_input_returns_empty_without_calling_the_reranker() -> None:
    reranker = FailingReranker(AssertionError("must not be called"))
    rerank = LycheeRerank(reranker=reranker, fail_open=False)
    assert rerank.postprocess_nodes([], query_str="q") == []
    assert await rerank.apostprocess_nodes([], query_str="q") == []
    assert reranker.calls == 0


def test_a_query_is_required(tiny_reranker: LocalReranker, nodes: list[TextNode]) -> None:
    with pytest.raises(InvalidInputError, match="query"):
        LycheeRerank(reranker=tiny_reranker).postprocess_nodes(with_scores(nodes))


async def test_a_failing_reranker_keeps_the_first_stage_order_flagged_and_logged(
    nodes: list[TextNode], caplog: pytest.LogCaptureFixture
) -> None:
    first_stage = with_scores(nodes)
    rerank = LycheeRerank(reranker=FailingReranker(TimeoutError("read timed out")), top_n=3)
    with caplog.at_level(logging.WARNING):
        kept = rerank.postprocess_nodes(first_stage, query_str="q")
    assert [node.node.id_ for node in kept] == ["text-dress", "image-path", "text-car"]
    assert [node.score for node in kept] == [node.score for node in first_stage[:3]]
    assert all(node.node.metadata["rerank_failed"] is True for node in kept)
    assert all("rerank_failed" not in node.node.metadata for node in first_stage)
    assert "read timed out" in caplog.text
    asynchronous = await rerank.apostprocess_nodes(first_stage, query_str="q")
    assert [node.node.id_ for node in asynchronous] == [node.node.id_ for node in kept]


async def test_fail_closed_raises(nodes: list[TextNode]) -> None:
    rerank = LycheeRerank(reranker=FailingReranker(ConnectionError("refused")), fail_open=False)
    with pytest.raises(ConnectionError):
        rerank.postprocess_nodes(with_scores(nodes), query_str="q")
    with pytest.raises(ConnectionError):
        await rerank.apostprocess_nodes(with_scores(nodes), query_str="q")


def test_a_bad_image_node_raises_even_when_failing_open(tiny_reranker: LocalReranker, tmp_path: Path) -> None:
    broken = [NodeWithScore(node=ImageNode(image_path=str(tmp_path / "missing.png")), score=1.0)]
    with pytest.raises(ImageError):
        LycheeRerank(reranker=tiny_reranker, fail_open=True).postprocess_nodes(broken, query_str="q")


async def test_async_postprocessing_does_not_block_and_honours_timeout_s(nodes: list[TextNode]) -> None:
    ticks = 0

    async def ticker() -> None:
        nonlocal ticks
        while True:
            ticks += 1
            await asyncio.sleep(0.005)

    task = asyncio.create_task(ticker())
    kept = await LycheeRerank(reranker=SlowReranker(0.3), top_n=None).apostprocess_nodes(
        with_scores(nodes), query_str="q"
    )
    assert ticks >= 10
    assert [node.score for node in kept] == [0.5] * len(nodes)
    started = time.monotonic()
    late = await LycheeRerank(reranker=SlowReranker(5.0), top_n=1, timeout_s=0.05).apostprocess_nodes(
        with_scores(nodes), query_str="q"
    )
    task.cancel()
    assert time.monotonic() - started < 2.0
    assert [node.node.metadata.get("rerank_failed") for node in late] == [True]


def test_importing_without_llama_index_names_the_extra(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "llama_index.core", None)
    monkeypatch.delitem(sys.modules, "lychee_rerank.adapters.llamaindex")
    with pytest.raises(ImportError, match=r"lychee-rerank\[llamaindex\]"):
        importlib.import_module("lychee_rerank.adapters.llamaindex")


async def test_a_refused_api_key_is_reported_in_the_node_metadata_and_logged_as_an_error(
    nodes: list[TextNode], caplog: pytest.LogCaptureFixture
) -> None:
    body = {"error": {"type": "unauthorized", "message": "missing or wrong API key", "status": 401}}
    first_stage = with_scores(nodes)
    with LoopbackServer(lambda number, request: Reply.json(401, body)) as server, caplog.at_level(logging.WARNING):
        rerank = LycheeRerank(reranker=RemoteReranker(server.url, api_key="wrong"), top_n=2, timeout_s=5.0)
        kept = rerank.postprocess_nodes(first_stage, query_str="q")
        asynchronous = await rerank.apostprocess_nodes(first_stage, query_str="q")
    assert [node.node.id_ for node in kept] == [node.node.id_ for node in first_stage[:2]]
    for node in [*kept, *asynchronous]:
        assert node.node.metadata[RERANK_FAILED_KEY] is True
        assert node.node.metadata[RERANK_ERROR_KEY].startswith("RemoteAuthError:")
    assert all(RERANK_ERROR_KEY not in node.node.metadata for node in first_stage)
    assert {record.levelno for record in caplog.records} == {logging.ERROR}
