"""``lychee-rerank batch``: local, against a running service, resumable, bad rows and a cut-off last line."""

from __future__ import annotations

import io
import json
from pathlib import Path
from typing import Any

import pytest

from lychee_rerank.core import LocalReranker, RemoteReranker
from lychee_rerank.core.batch import Progress, repair_and_read_done, run_batch
from lychee_rerank.core.cli import main
from lychee_rerank.core.errors import LycheeError
from lychee_rerank.core.server.background import running_service


def _rows(image: Path) -> list[dict[str, Any]]:
    return [
        {"id": "a", "query": "red shoes", "documents": ["a red running shoe", "blue sky", "green tea"]},
        {
            "id": 7,
            "query": {"text": "this picture", "image": str(image)},
            "documents": [{"text": "a photo", "image": str(image)}, "words only"],
            "instruction": "image-search",
        },
        {"id": "c", "query": "linen shirt", "documents": ["white linen shirt", "wool coat", "linen", "shirt"]},
    ]


def _write(path: Path, rows: list[Any]) -> Path:
    path.write_text("".join((row if isinstance(row, str) else json.dumps(row)) + "\n" for row in rows))
    return path


def _read(path: Path) -> dict[Any, dict[str, Any]]:
    return {row["id"]: row for row in map(json.loads, path.read_text().splitlines())}


def _expected(reranker: LocalReranker, row: dict[str, Any]) -> list[tuple[int, float]]:
    results = reranker.rerank(row["query"], row["documents"], instruction=row.get("instruction"))
    return [(result.index, result.score) for result in results]


def test_batch_writes_ranked_results_best_first(
    tiny_reranker: LocalReranker, image_files: list[Path], tmp_path: Path
) -> None:
    rows = _rows(image_files[0])
    source = _write(tmp_path / "in.jsonl", rows)
    summary = run_batch(source, tmp_path / "out.jsonl", tiny_reranker, progress=False)
    assert (summary.written, summary.errors, summary.skipped) == (3, 0, 0)
    out = _read(tmp_path / "out.jsonl")
    for row in rows:
        results = out[row["id"]]["results"]
        assert [item["score"] for item in results] == sorted((item["score"] for item in results), reverse=True)
        expected = _expected(tiny_reranker, row)
        assert [item["index"] for item in results] == [index for index, _ in expected]
        assert [item["score"] for item in results] == pytest.approx([score for _, score in expected], abs=1e-6)


def test_bad_rows_are_written_as_errors_and_the_run_goes_on(tiny_reranker: LocalReranker, tmp_path: Path) -> None:
    source = _write(
        tmp_path / "in.jsonl",
        [
            {"id": "ok1", "query": "q", "documents": ["a", "b"]},
            "{not json",
            {"id": "no-docs", "query": "q", "documents": []},
            {"id": "no-query", "documents": ["a"]},
            {"id": "bad-image", "query": "q", "documents": [{"image": "/no/such/file.png"}]},
            {"query": "q", "documents": ["a"]},
            {"id": "ok2", "query": "q", "documents": ["c"]},
        ],
    )
    summary = run_batch(source, tmp_path / "out.jsonl", tiny_reranker, progress=False)
    out = _read(tmp_path / "out.jsonl")
    assert summary.errors == 5
    assert set(out) == {"ok1", "line 2", "no-docs", "no-query", "bad-image", "line 6", "ok2"}
    assert "not JSON" in out["line 2"]["error"]
    assert "documents" in out["no-docs"]["error"]
    assert "query" in out["no-query"]["error"]
    assert "does not exist" in out["bad-image"]["error"]
    assert "'id'" in out["line 6"]["error"]
    assert len(out["ok1"]["results"]) == 2
    assert len(out["ok2"]["results"]) == 1


def test_resume_skips_written_ids_and_repairs_a_cut_off_last_line(
    tiny_reranker: LocalReranker, image_files: list[Path], tmp_path: Path
) -> None:
    rows = _rows(image_files[0])
    source = _write(tmp_path / "in.jsonl", rows)
    output = tmp_path / "out.jsonl"
    # A first run wrote row "a", then died while writing row 7.
    first = json.dumps({"id": "a", "results": [{"index": 0, "score": 0.5}]})
    output.write_text(first + "\n" + '{"id": 7, "results": [{"ind')
    summary = run_batch(source, output, tiny_reranker, progress=False)
    assert (summary.written, summary.skipped) == (2, 1)
    lines = output.read_text().splitlines()
    assert lines[0] == first  # kept as it was: not scored again
    assert [json.loads(line)["id"] for line in lines] == ["a", 7, "c"]
    assert all(line.endswith("}") for line in lines)
    # Nothing left to do: a third run writes nothing.
    assert run_batch(source, output, tiny_reranker, progress=False).written == 0


def test_an_output_that_is_not_batch_output_is_refused(tmp_path: Path) -> None:
    output = _write(tmp_path / "out.jsonl", ["hello", '{"id": 1, "results": []}'])
    with pytest.raises(LycheeError, match="line 1: not a row"):
        repair_and_read_done(output)


def test_batch_against_a_running_service_equals_the_local_batch(
    tiny_model_dir: Path, image_files: list[Path], tmp_path: Path
) -> None:
    rows = _rows(image_files[1])
    source = _write(tmp_path / "in.jsonl", rows)
    local = LocalReranker(model=str(tiny_model_dir), device="cpu")
    run_batch(source, tmp_path / "local.jsonl", local, progress=False)
    with running_service(tiny_model_dir) as service:
        assert main(["batch", str(source), str(tmp_path / "remote.jsonl"), "--url", service.url, "--no-progress"]) == 0
    remote, expected = _read(tmp_path / "remote.jsonl"), _read(tmp_path / "local.jsonl")
    assert remote.keys() == expected.keys()
    for key, row in expected.items():
        assert [item["index"] for item in remote[key]["results"]] == [item["index"] for item in row["results"]]
        for ours, theirs in zip(remote[key]["results"], row["results"], strict=True):
            assert ours["score"] == pytest.approx(theirs["score"], abs=1e-5)


def test_a_service_that_is_down_stops_the_run_instead_of_failing_every_row(tmp_path: Path) -> None:
    source = _write(tmp_path / "in.jsonl", [{"id": 1, "query": "q", "documents": ["a"]}])
    down = RemoteReranker("http://127.0.0.1:9", max_retries=0, timeout=2)
    with pytest.raises(LycheeError, match="unreachable"):
        run_batch(source, tmp_path / "out.jsonl", down, progress=False)
    assert not (tmp_path / "out.jsonl").read_text()


def test_batch_command_with_a_local_model(
    tiny_model_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    source = _write(tmp_path / "in.jsonl", [{"id": 1, "query": "q", "documents": ["a", "b", "c"]}])
    assert (
        main(["batch", str(source), str(tmp_path / "out.jsonl"), "--model", str(tiny_model_dir), "--device", "cpu"])
        == 0
    )
    assert [item["index"] for item in _read(tmp_path / "out.jsonl")[1]["results"]] != []
    assert "1/1 rows" in capsys.readouterr().err  # the progress line
    assert main(["batch", str(tmp_path / "missing.jsonl"), str(tmp_path / "o.jsonl")]) == 2


def test_progress_line_shows_rate_and_time_left() -> None:
    stream = io.StringIO()
    progress = Progress(10, stream, every_s=0.0)
    progress.started -= 4.0  # as if the first four rows took four seconds
    progress.update(4)
    line = progress.line(progress.started + 4.0)
    assert line == "4/10 rows  1.0 rows/s  ETA 0:00:06"
    assert "4/10 rows" in stream.getvalue()
