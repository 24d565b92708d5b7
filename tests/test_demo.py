"""``lychee-rerank demo``: the corpus, BM25 in embedded Qdrant, reranking, the tables and the fallback."""

from __future__ import annotations

import contextlib
import io
import math
import re
from dataclasses import dataclass
from pathlib import Path

import pytest

from lychee_rerank.adapters.demo.corpus import DEMO_QUERIES, corpus_items, ensure_corpus
from lychee_rerank.adapters.demo.sparse import BM25, term_id, tokenize
from lychee_rerank.core import Document, LocalReranker, Query
from lychee_rerank.core.cli import main

qdrant_client = pytest.importorskip("qdrant_client")

TOP_K = 4
_LEFT = re.compile(r"^\s*(\d+)\s+(-?[\d.]+)\s+(.*)$")
_RIGHT = re.compile(r"^\s*(\d+)\s+([\d.]+)\s+#(\d+)\s+(.*)$")


@dataclass
class Row:
    """One printed row: the first-stage entry and the reranked entry at the same position."""

    bm25_score: float
    bm25_caption: str
    rerank_score: float
    was: int
    rerank_caption: str


@dataclass
class DemoRun:
    """What one in-process ``lychee-rerank demo`` printed, and the cache folder it used."""

    status: int
    out: str
    err: str
    cache: Path

    def tables(self) -> list[list[Row]]:
        """The rows of each query's table, in query order."""
        tables: list[list[Row]] = []
        rows: list[Row] | None = None
        for line in self.out.splitlines():
            if "─┼─" in line:
                rows = []
                tables.append(rows)
            elif rows is not None and " │ " in line:
                left, right = line.split(" │ ")
                left_match, right_match = _LEFT.match(left), _RIGHT.match(right)
                assert left_match, line
                assert right_match, line
                rows.append(
                    Row(
                        float(left_match[2]),
                        left_match[3].strip(),
                        float(right_match[2]),
                        int(right_match[3]),
                        right_match[4].strip(),
                    )
                )
            else:
                rows = None
        return tables


def _run_demo(cache: Path, capsys: pytest.CaptureFixture[str], *argv: str) -> DemoRun:
    status = main(["demo", *argv])
    captured = capsys.readouterr()
    return DemoRun(status, captured.out, captured.err, cache)


def _shown(caption: str, text: str) -> bool:
    """Whether a printed (possibly cut) caption shows ``text``."""
    flat = " ".join(text.split())
    return flat.startswith(caption.removesuffix("…")) and (caption.endswith("…") or caption == flat)


@pytest.fixture(scope="module")
def demo_output(tiny_model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> DemoRun:
    """The demo's three built-in queries reranked by the tiny checkpoint, run once for this module.

    Output is captured by redirection because ``capsys`` is function-scoped.
    """
    cache = tmp_path_factory.mktemp("lychee-cache")
    out, err = io.StringIO(), io.StringIO()
    with pytest.MonkeyPatch.context() as patch, contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        patch.setenv("LYCHEE_CACHE_DIR", str(cache))
        patch.delenv("LYCHEE_MODEL", raising=False)
        status = main(["demo", "--model", str(tiny_model_dir), "--top-k", str(TOP_K), "--device", "cpu"])
    return DemoRun(status, out.getvalue(), err.getvalue(), cache)


def _first_stage(cache: Path, text: str) -> list[int]:
    """Ids of the demo's first-stage hits for ``text``, read back from its Qdrant folder."""
    from lychee_rerank.adapters.demo.run import first_stage, open_index

    items = corpus_items()
    bm25 = BM25.fit(item.text for item in items)
    client = open_index(cache / "demo", items, bm25)
    try:
        return [hit.item.id for hit in first_stage(client, bm25, items, text, TOP_K)]
    finally:
        client.close()


def test_demo_prints_before_and_after_tables_for_each_query(demo_output: DemoRun) -> None:
    assert demo_output.status == 0, demo_output.err
    tables = demo_output.tables()
    assert len(tables) == len(DEMO_QUERIES)
    for number, query in enumerate(DEMO_QUERIES, start=1):
        assert f"Query {number}: {query.text}" in demo_output.out
    assert "first stage: BM25 in Qdrant" in demo_output.out
    assert "UNTRAINED" not in demo_output.out  # a folder was named: no fallback banner
    bm25 = BM25.fit(item.text for item in corpus_items())
    for query, rows in zip(DEMO_QUERIES, tables, strict=True):
        assert len(rows) == TOP_K
        # The left column is BM25's own ranking of the whole corpus, computed here without Qdrant.
        scores = {item.id: bm25.score(query.text, item.text) for item in corpus_items()}
        expected = sorted(corpus_items(), key=lambda item: (-round(scores[item.id], 6), item.id))[:TOP_K]
        for row, item in zip(rows, expected, strict=True):
            assert row.bm25_score == pytest.approx(scores[item.id], abs=0.006)
            assert _shown(row.bm25_caption, item.text), (row.bm25_caption, item.text)
        assert [row.bm25_score for row in rows] == sorted((row.bm25_score for row in rows), reverse=True)
        # Both columns hold the same candidates: reranking reorders, never adds or drops.
        assert sorted(row.was for row in rows) == list(range(1, TOP_K + 1))


def test_reranked_order_is_the_reranker_score_order_of_the_same_hits(
    demo_output: DemoRun, tiny_reranker: LocalReranker
) -> None:
    items = {item.id: item for item in corpus_items()}
    images = demo_output.cache / "demo" / "corpus" / "images"
    for query, rows in zip(DEMO_QUERIES, demo_output.tables(), strict=True):
        hits = [items[item_id] for item_id in _first_stage(demo_output.cache, query.text)]
        for row, item in zip(rows, hits, strict=True):
            assert _shown(row.bm25_caption, item.text), (row.bm25_caption, item.text)
        query_input = Query(query.text, image=str(images / query.image) if query.image else None)
        documents = [Document(item.text, image=str(images / item.image)) for item in hits]
        scores = tiny_reranker.score(query_input, documents, instruction=query.instruction)
        order = sorted(range(len(hits)), key=lambda index: (-scores[index], index))
        assert [row.was - 1 for row in rows] == order
        for row, index in zip(rows, order, strict=True):
            assert row.rerank_score == pytest.approx(scores[index], abs=1e-4)
            assert _shown(row.rerank_caption, hits[index].text)


def test_qdrant_collection_holds_the_corpus(demo_output: DemoRun) -> None:
    from lychee_rerank.adapters.demo.run import COLLECTION

    client = qdrant_client.QdrantClient(path=str(demo_output.cache / "demo" / "qdrant"))
    try:
        assert client.count(COLLECTION, exact=True).count == len(corpus_items())
        points, _ = client.scroll(COLLECTION, limit=100, with_payload=True)
    finally:
        client.close()
    by_id = {item.id: item for item in corpus_items()}
    assert {int(point.id) for point in points} == set(by_id)
    for point in points:
        payload = point.payload or {}
        item = by_id[int(point.id)]
        assert payload["text"] == item.text
        assert payload["kind"] == item.kind
        assert Path(payload["image_path"]).is_file()


def test_default_model_falls_back_to_tiny_with_a_banner_when_the_hub_is_unreachable(
    tiny_model_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    # HF_HUB_OFFLINE=1 (conftest) makes the default hub id unreachable. The tiny checkpoint is put
    # where `tiny` is looked for, so the fallback does not spend time writing a new one.
    monkeypatch.setenv("LYCHEE_CACHE_DIR", str(tmp_path))
    monkeypatch.delenv("LYCHEE_MODEL", raising=False)
    (tmp_path / "tiny").symlink_to(tiny_model_dir, target_is_directory=True)
    run = _run_demo(tmp_path, capsys, "--query", "red summer dress", "--top-k", "2", "--device", "cpu")
    assert run.status == 0, run.err
    assert "could not load 'vec-ai/lychee-rerank-mm'" in run.out
    assert "UNTRAINED" in run.out
    assert "hf download vec-ai/lychee-rerank-mm --local-dir ./lychee-rerank-mm" in run.out
    assert "lychee-rerank demo --model ./lychee-rerank-mm" in run.out
    assert "reranked: tiny" in run.out
    assert [len(rows) for rows in run.tables()] == [2]


@pytest.mark.parametrize("kind", ["missing", "not-a-checkpoint"])
def test_a_model_folder_that_cannot_be_loaded_is_an_error_not_a_fallback(
    kind: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("LYCHEE_CACHE_DIR", str(tmp_path))
    folder = tmp_path / "model"
    if kind == "not-a-checkpoint":
        folder.mkdir()
    run = _run_demo(tmp_path, capsys, "--model", str(folder), "--query", "red dress")
    assert run.status == 2
    assert "error:" in run.err
    assert "UNTRAINED" not in run.out
    assert not run.tables()


def test_custom_query_with_a_reference_photo_and_the_tiny_note(
    tiny_model_dir: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    monkeypatch.setenv("LYCHEE_CACHE_DIR", str(tmp_path))
    (tmp_path / "tiny").symlink_to(tiny_model_dir, target_is_directory=True)
    photo = ensure_corpus(tmp_path / "elsewhere")[0]
    photo_path = tmp_path / "elsewhere" / "images" / photo.image
    run = _run_demo(
        tmp_path, capsys, "--model", "tiny", "--query", "navy linen shirt", "--query-image", str(photo_path),
        "--instruction", "ecommerce", "--top-k", "2", "--device", "cpu",
    )  # fmt: skip
    assert run.status == 0, run.err
    assert "--model tiny is a small random model" in run.out
    assert f"+ reference photo {photo_path}" in run.out
    assert "Instruction: ecommerce: Given a product image and description" in run.out
    rows = run.tables()[0]
    assert len(rows) == 2
    assert rows[0].bm25_caption.startswith("Navy linen shirt")


def test_a_query_with_no_word_in_the_corpus_finds_nothing(
    tiny_model_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("LYCHEE_CACHE_DIR", str(tmp_path))
    run = _run_demo(tmp_path, capsys, "--model", str(tiny_model_dir), "--query", "zzyzx qwop", "--device", "cpu")
    assert run.status == 0, run.err
    assert "the first stage found nothing" in run.out


def test_bm25_idf_ranks_rare_terms_above_common_ones() -> None:
    bm25 = BM25.fit(["white shirt", "white dress", "white mug", "red dress"])
    assert bm25.idf("shirt") > bm25.idf("dress") > bm25.idf("white") > 0
    assert bm25.idf("absent") > bm25.idf("shirt")  # df = 0 is the rarest possible
    assert bm25.idf("white") == pytest.approx(math.log(1 + (4 - 3 + 0.5) / (3 + 0.5)))


def test_bm25_document_weights_saturate_and_penalise_length() -> None:
    bm25 = BM25.fit(["shirt", "shirt shirt shirt", "shirt with a very long description of many words"])
    one, three = (bm25.score("shirt", text) for text in ("shirt", "shirt shirt shirt"))
    long = bm25.score("shirt", "shirt with a very long description of many words")
    assert one < three < (bm25.k1 + 1) * bm25.idf("shirt")
    assert long < one


def test_cjk_text_is_indexed_as_characters_and_character_pairs() -> None:
    assert tokenize("红色连衣裙") == ["红", "色", "连", "衣", "裙", "红色", "色连", "连衣", "衣裙"]
    # Han runs are cut at punctuation and Latin text; English around them is tokenised as words.
    assert tokenize("图 11：Accuracy 准确率") == ["图", "11", "accuracy", "准", "确", "率", "准确", "确率"]
    bm25 = BM25.fit(["红色连衣裙，夏季长款", "粉色连衣裙", "白色衬衫"])
    assert bm25.score("夏季红色连衣裙", "红色连衣裙，夏季长款") > bm25.score("夏季红色连衣裙", "粉色连衣裙") > 0


def test_query_terms_absent_from_the_corpus_add_nothing() -> None:
    bm25 = BM25.fit(["white linen shirt", "red dress"])
    assert bm25.query_vector("zzyzx").indices == []
    assert bm25.query_vector("white zzyzx").indices == [term_id("white")]
    assert bm25.score("white zzyzx", "white linen shirt") == bm25.score("white", "white linen shirt")


def test_stop_words_and_plurals_are_normalised() -> None:
    assert tokenize("Shirts for the summer") == ["shirt", "summer"]
    assert tokenize("dress versus dresses") == ["dress", "versus", "dress"]


def test_a_collection_from_another_corpus_version_is_rebuilt(tmp_path: Path) -> None:
    from lychee_rerank.adapters.demo.run import COLLECTION, open_index

    items = ensure_corpus(tmp_path / "corpus")
    bm25 = BM25.fit(item.text for item in items)
    client = open_index(tmp_path, items, bm25)
    client.set_payload(COLLECTION, payload={"corpus_version": -1, "text": "stale"}, points=[items[0].id])
    client.close()
    client = open_index(tmp_path, items, bm25)
    try:
        [point] = client.retrieve(COLLECTION, ids=[items[0].id], with_payload=True)
        assert point.payload is not None
        assert point.payload["text"] == items[0].text
        assert client.count(COLLECTION, exact=True).count == len(items)
    finally:
        client.close()
