"""The ``lychee-rerank score`` command."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from lychee_rerank.core import LocalReranker
from lychee_rerank.core.cli import main

EXAMPLES = Path(__file__).resolve().parent.parent / "examples" / "images"


def test_score_prints_a_ranked_table_matching_the_library(
    tiny_model_dir: Path, tiny_reranker: LocalReranker, capsys: pytest.CaptureFixture[str]
) -> None:
    shirt, shoes = str(EXAMPLES / "shirt_white.png"), str(EXAMPLES / "shoes_red.png")
    status = main(
        ["score", "--model", str(tiny_model_dir), "--device", "cpu", "--query", "white shirt",
         "--doc", "White linen shirt", "--doc-image", shirt,
         "--doc-image", shoes,
         "--doc", "适合小个子女生的显高西装套装",
         "--json"]
    )  # fmt: skip
    assert status == 0
    rows = json.loads(capsys.readouterr().out)
    documents = [
        {"text": "White linen shirt", "image": shirt},
        {"image": shoes},
        {"text": "适合小个子女生的显高西装套装"},
    ]
    expected = tiny_reranker.score("white shirt", documents)
    assert sorted(row["index"] for row in rows) == [0, 1, 2]
    assert [row["rank"] for row in rows] == [1, 2, 3]
    for row in rows:
        assert row["score"] == pytest.approx(expected[row["index"]], abs=1e-6)
    assert [row["score"] for row in rows] == sorted(expected, reverse=True)
    assert rows[[row["index"] for row in rows].index(0)]["image"] == shirt


def test_score_table_shows_top_n_and_the_instruction_preset(
    tiny_model_dir: Path, tiny_reranker: LocalReranker, capsys: pytest.CaptureFixture[str]
) -> None:
    documents = ["a", "bb", "ccc", "dddd"]
    argv = ["score", "--model", str(tiny_model_dir), "--query", "q", "--instruction", "academic", "--top-n", "2"]
    for document in documents:
        argv += ["--doc", document]
    assert main(argv) == 0
    lines = capsys.readouterr().out.splitlines()
    table = lines[lines.index(next(line for line in lines if line.lstrip().startswith("rank"))) + 1 :]
    assert len(table) == 2
    best = max(tiny_reranker.score("q", documents, instruction="academic"))
    assert f"{best:7.4f}" in table[0]


def test_docs_file_reads_json_lines(tiny_model_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    docs = tmp_path / "docs.jsonl"
    docs.write_text('"plain text"\n{"text": "with image", "image": "%s"}\n\n' % (EXAMPLES / "chart_revenue.png"))
    assert main(["score", "--model", str(tiny_model_dir), "--query", "q", "--docs-file", str(docs), "--json"]) == 0
    assert len(json.loads(capsys.readouterr().out)) == 2


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["score", "--query", "q"], "give at least one document"),
        (["score", "--doc", "d"], "give a query"),
        (["score", "--query", "q", "--doc-image", "/no/such/image.png"], "document 0: "),
        (["score", "--query", "q", "--doc", "d", "--model", "/no/such/folder"], "no folder '/no/such/folder'"),
    ],
)
def test_errors_are_one_clear_line_and_exit_2(
    tiny_model_dir: Path, argv: list[str], message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    if "--model" not in argv:
        argv = [*argv, "--model", str(tiny_model_dir)]
    assert main(argv) == 2
    last_line = capsys.readouterr().err.strip().splitlines()[-1]
    assert last_line.startswith("error: ")
    assert message in last_line
