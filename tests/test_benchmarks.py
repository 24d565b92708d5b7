"""Smoke tests for the engine benchmark (benchmarks/bench_engine.py) on the tiny shape."""

from __future__ import annotations

import argparse
import importlib.util
import json
import sys
from pathlib import Path
from types import ModuleType

import pytest

BENCHMARK = Path(__file__).resolve().parent.parent / "benchmarks" / "bench_engine.py"


@pytest.fixture(scope="module")
def bench_engine() -> ModuleType:
    """The benchmark script, imported by path (``benchmarks/`` is not a package)."""
    spec = importlib.util.spec_from_file_location("bench_engine", BENCHMARK)
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up by name
    spec.loader.exec_module(module)
    return module


def test_tiny_mixed_run_writes_positive_speed_and_matching_scores(
    bench_engine: ModuleType, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("LYCHEE_CACHE_DIR", str(tmp_path / "cache"))
    out = tmp_path / "out.json"

    status = bench_engine.main(
        ["--shape", "tiny", "--queries", "1", "--docs", "4", "--modality", "mixed", "--json", str(out)]
    )

    assert status == 0
    assert (tmp_path / "cache" / "bench-tiny" / "config.json").is_file()
    report = json.loads(out.read_text())
    (workload,) = report["workloads"]
    assert workload["workload"] == "mixed"
    engine, reference = workload["engine"], workload["reference"]
    assert engine["pairs"] == reference["pairs"] == 4
    for path in (engine, reference):
        assert path["pairs_per_second"] > 0
        assert path["tokens_per_second"] > 0
        assert path["vision_patches"] > 0
        assert path["matmul_fraction"] > 0
    assert workload["speedup"] > 0
    assert workload["max_abs_difference"] <= 1e-4
    # The mixed query image is shared by the four documents, so the engine encodes it once.
    assert workload["batch_stats"]["images_encoded"] < 1 + 4
    printed = capsys.readouterr().out
    assert "| mixed | engine | 4 |" in printed
    assert "Summary:" in printed


def test_reference_pairs_are_spread_over_requests(bench_engine: ModuleType) -> None:
    assert bench_engine.select_pairs(8, None) == list(range(8))
    assert bench_engine.select_pairs(8, 4) == [0, 2, 4, 6]
    assert bench_engine.select_pairs(3, 10) == [0, 1, 2]
    assert bench_engine.select_pairs(5, 0) == []


def test_workloads_are_deterministic_and_of_the_announced_kinds(bench_engine: ModuleType) -> None:
    first = bench_engine.build_workload("mixed", 2, 6, seed=3)
    again = bench_engine.build_workload("mixed", 2, 6, seed=3)
    assert [q.text for q, _ in first.requests] == [q.text for q, _ in again.requests]
    query, documents = first.requests[0]
    assert query.text
    assert query.image is not None
    kinds = [(doc.text is not None, doc.image is not None) for doc in documents]
    assert kinds == [(True, False), (False, True), (True, True)] * 2
    assert all(doc.image is None for _, docs in bench_engine.build_workload("text", 1, 4, 0).requests for doc in docs)


def test_in_memory_build_shares_one_model_between_engine_and_reference(bench_engine: ModuleType) -> None:
    # The 7b path builds its model in memory on CUDA; the same code on the tiny shape runs anywhere.
    args = argparse.Namespace(device="cpu", dtype="float32", max_pixels=None, max_batch_tokens=4096, seed=0)
    backends = bench_engine.build_in_memory_backends("tiny", args)
    assert backends.reference.model is backends.engine.loaded.model
    workload = bench_engine.build_workload("mixed", 1, 3, seed=0, image_scale=0.25)
    query, documents = workload.requests[0]
    engine_scores = backends.engine.score(query, documents)
    reference_scores = [backends.reference.score(*map(bench_engine._as_mapping, (query, doc))) for doc in documents]
    assert engine_scores == pytest.approx(reference_scores, abs=1e-4)


def test_7b_without_cuda_is_refused_with_a_message(
    bench_engine: ModuleType, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setattr(bench_engine.torch.cuda, "is_available", lambda: False)
    assert bench_engine.main(["--shape", "7b"]) == 2
    assert "needs a CUDA GPU" in capsys.readouterr().err
