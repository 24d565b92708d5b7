"""Smoke test of benchmarks/load_service.py against a live tiny service (one second of load)."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from types import ModuleType

import pytest

from lychee_rerank.core.server.background import running_service

SCRIPT = Path(__file__).resolve().parent.parent / "benchmarks" / "load_service.py"


@pytest.fixture(scope="module")
def load_service() -> ModuleType:
    """The script, imported by path (``benchmarks/`` is not a package)."""
    spec = importlib.util.spec_from_file_location("load_service", SCRIPT)
    if spec is None or spec.loader is None:
        raise ImportError(SCRIPT)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up by name
    spec.loader.exec_module(module)
    return module


async def test_load_script_reports_rates_and_percentiles(load_service: ModuleType, tiny_model_dir: Path) -> None:
    with running_service(tiny_model_dir, max_queue=2) as service:
        result = await load_service.run_load(
            service.url,
            duration_s=1.0,
            concurrency=4,
            documents=2,
            words=4,
            image_fraction=0.5,
            queries=2,
            warmup=1,
        )
    summary = result.summary()
    assert summary["requests"] > 0
    assert summary["errors"] == 0
    assert summary["documents_per_s"] == pytest.approx(2 * summary["requests_per_s"], rel=0.01)
    assert summary["p50_ms"] <= summary["p95_ms"] <= summary["p99_ms"]
