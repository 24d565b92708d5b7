"""The GPU check script (benchmarks/gpu_check.py), rehearsed end to end on the CPU with the tiny shape."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def test_dry_run_writes_both_reports_with_every_figure(tmp_path: Path) -> None:
    # Run as on the GPU machine: from the repository root, a fresh interpreter, no PYTHONPATH.
    environment = {key: value for key, value in os.environ.items() if key != "PYTHONPATH"}
    command = [
        sys.executable,
        "benchmarks/gpu_check.py",
        "--dry-run",
        "--shape",
        "tiny",
        "--candidates",
        "3",
        "--batch",
        "2",
        "--single-pairs",
        "1",
        "--reference-pairs",
        "1",
        "--vision-images",
        "2",
        "--out",
        str(tmp_path),
    ]
    finished = subprocess.run(command, cwd=ROOT, env=environment, capture_output=True, text=True, timeout=600)
    assert finished.returncode == 0, finished.stdout[-3000:] + finished.stderr[-3000:]

    (json_path,) = tmp_path.glob("gpu_check-*-dry-run.json")
    (markdown_path,) = tmp_path.glob("gpu_check-*-dry-run.md")
    report = json.loads(json_path.read_text())
    environment_keys = {"date", "device_name", "dtype", "modules", "matmul_tflops", "parameters_b", "attention"}
    assert environment_keys <= report["environment"].keys()
    assert report["environment"]["matmul_tflops"] > 0
    assert {entry["status"] for entry in report["steps"].values()} == {"ok"}
    # The GPU tests ran in a subprocess: here, without CUDA, every one of them is skipped with its reason.
    tests = report["steps"]["gpu tests"]
    assert tests["counts"]["failed"] == tests["counts"]["errors"] == 0
    assert tests["counts"]["passed"] + tests["counts"]["skipped"] >= 5
    assert all(test["message"] or test["outcome"] == "passed" for test in tests["tests"])
    workloads = {workload["workload"]: workload for workload in report["workloads"]}
    assert set(workloads) == {"image+text", "text"}
    for workload in workloads.values():
        for key in (
            "single_pair_latency_ms",
            "batch_latency_ms",
            "pairs_per_second",
            "tokens_per_second",
            "matmul_peak_percent",
            "reference_pairs_per_second",
            "max_abs_difference",
        ):
            assert workload[key] > 0 or key == "max_abs_difference", key
        assert "peak_memory_mib" in workload  # None on the CPU
        assert workload["nan_scores"] == 0
    assert workloads["image+text"]["vision_patches"] > 0
    vision = report["vision_tower"]
    assert vision["images"] == 2
    assert vision["max_abs_feature_difference"] < 1e-2
    # Before: one attention call per window and layer; after: one per layer.
    assert vision["after_attention_calls"] < vision["before_attention_calls"]
    profiles = report["profiles"]
    assert set(profiles) == {"image+text", "image+text, transformers' tower", "text"}
    assert profiles["image+text"]["vision_attention"] == "sdpa-packed"
    assert profiles["image+text, transformers' tower"]["vision_attention"] == "transformers"
    assert profiles["image+text"]["attention_calls"] < profiles["image+text, transformers' tower"]["attention_calls"]
    for entry in profiles.values():
        assert entry["wall_seconds"] > 0
        assert entry["aten_calls"] > 0
        assert entry["table"]
    parity = report["float32_parity"]
    assert parity["image+text"]["max_abs_difference"] < 1e-4
    assert parity["text"]["max_abs_difference"] < 1e-4
    markdown = markdown_path.read_text()
    for heading in (
        "# GPU check",
        "## GPU tests",
        "## Engine, all candidates",
        "## Vision tower",
        "## Where a request's time goes",
        "## Engine against the naive reference",
        "## Steps",
    ):
        assert heading in markdown
