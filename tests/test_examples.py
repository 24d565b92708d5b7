"""Each scenario example runs offline against the tiny checkpoint and prints a ranked table."""

from __future__ import annotations

import importlib.util
import re
import sys
from pathlib import Path
from types import ModuleType

import pytest

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"
_ROW = re.compile(r"^\s*(\d+)\s+(\d\.\d{4})\s+(\S+)\s+(.+)$")


def _load(name: str) -> ModuleType:
    spec = importlib.util.spec_from_file_location(f"lychee_example_{name}", EXAMPLES / f"{name}.py")
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    # Registered as the import system would: pydantic resolves a model's annotations through sys.modules.
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


def _tables(output: str) -> list[list[tuple[int, float, str]]]:
    """Every ``rank score id text`` table in ``output``: (rank, score, id) per row."""
    tables: list[list[tuple[int, float, str]]] = []
    rows: list[tuple[int, float, str]] | None = None
    for line in output.splitlines():
        if line.split() == ["rank", "score", "id", "text"]:
            rows = []
            tables.append(rows)
        elif rows is not None and (match := _ROW.match(line)):
            rows.append((int(match[1]), float(match[2]), match[3]))
        else:
            rows = None
    return tables


def _check_ranked(rows: list[tuple[int, float, str]], count: int) -> None:
    assert [rank for rank, _, _ in rows] == list(range(1, count + 1))
    scores = [score for _, score, _ in rows]
    assert scores == sorted(scores, reverse=True)
    assert all(0.0 <= score <= 1.0 for score in scores)
    assert len({name for _, _, name in rows}) == count  # each document once


@pytest.mark.parametrize(
    ("name", "expected_rows"),
    [("ecommerce_search", 8), ("academic_figures", 6), ("industrial_inspection", 12)],
)
def test_scenario_example_prints_every_candidate_ranked(
    name: str, expected_rows: int, tiny_model_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    status = _load(name).main(["--model", str(tiny_model_dir), "--device", "cpu"])
    output = capsys.readouterr().out
    assert status == 0
    assert f"model: {tiny_model_dir}" in output
    assert "preset):" in output  # each scenario names the instruction preset it uses
    [rows] = _tables(output)
    _check_ranked(rows, expected_rows)


def test_langchain_rag_reranks_the_retrieved_documents_into_the_prompt(
    tiny_model_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    pytest.importorskip("langchain_core")
    status = _load("langchain_rag").main(["--model", str(tiny_model_dir), "--device", "cpu", "--top-n", "3"])
    output = capsys.readouterr().out
    assert status == 0
    first_stage, reranked = _tables(output)
    assert len(first_stage) == 8
    _check_ranked(reranked, 3)
    assert {name for _, _, name in reranked} <= {name for _, _, name in first_stage}
    context = output.split("prompt for the chat model:")[1]
    assert [line.split("]")[0].strip(" [") for line in context.splitlines() if line.startswith("    [p")] == [
        name for _, _, name in reranked
    ]


def test_llamaindex_query_engine_returns_reranked_source_nodes(
    tiny_model_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    pytest.importorskip("llama_index.core")
    status = _load("llamaindex_query_engine").main(["--model", str(tiny_model_dir), "--device", "cpu"])
    output = capsys.readouterr().out
    assert status == 0
    first_stage, reranked = _tables(output)
    assert len(first_stage) == 8
    _check_ranked(reranked, 3)
    assert {name for _, _, name in reranked} <= {name for _, _, name in first_stage}


def test_example_with_an_unloadable_model_folder_says_so(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    status = _load("ecommerce_search").main(["--model", str(tmp_path), "--device", "cpu"])
    assert status == 2
    assert "no config.json" in capsys.readouterr().err
