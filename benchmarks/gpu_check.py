"""One short GPU run that proves the GPU path: the GPU tests, the 7B shape's speed and memory, the vision batch.

Run from the repository root on a CUDA machine (no network needed; torch, transformers, pillow, numpy and
pytest are enough, and the project need not be pip-installed):

    python benchmarks/gpu_check.py                       # H100/H200: about 3-5 minutes
    python benchmarks/gpu_check.py --dry-run             # the same steps on the CPU, `small` shape
    python benchmarks/gpu_check.py --dry-run --shape tiny --candidates 4 --batch 2 --skip-gpu-tests

It writes ``gpu_check-<date>-<device>.json`` and ``.md`` to ``--out`` (default ``benchmarks/results/``):

1. the GPU tests (``pytest -m gpu`` in a subprocess): passed, failed and skipped counts, and the figures
   each test recorded (score deviations, memory cap, out-of-memory splits, peak memory);
2. the bf16 matmul FLOP/s of this device, measured in this run;
3. the ``7b`` shape (Qwen2.5-VL-7B's sizes, random weights in bf16, built in GPU memory, nothing written
   to disk) on two workloads: 100 image+text candidates of about 320 tokens, and 100 text documents of
   128 tokens. For each: single-pair latency (median over a few pairs), batch-of-50 latency, then all
   candidates at once: pairs/s, tokens/s, % of the measured matmul FLOP/s (the FLOP estimate of
   ``bench_engine.py``), peak memory and peak above the weights; the naive reference scores a sample
   of the same pairs in the same run (pairs/s, speed-up, max score difference);
4. the vision tower: the same distinct images encoded in one forward and one forward each, the ratio.

Every cold measurement clears the engine's caches first, so image decoding and the vision tower are
timed as a new request would pay them. A step that fails is recorded with its error and the run goes
on; ``--time-budget`` skips what would not fit.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import importlib.util
import json
import math
import os
import platform
import random
import re
import statistics
import subprocess
import sys
import tempfile
import time
import traceback
import xml.etree.ElementTree as ElementTree
from collections.abc import Callable, Iterator
from pathlib import Path
from types import ModuleType
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
LAYERS = ("core", "plugins", "adapters")


def make_project_importable() -> dict[str, str]:
    """Puts ``lychee_rerank`` (this checkout's folders) first on ``sys.path``, installed or not.

    The package maps ``lychee_rerank.core`` to ``core/`` and so on; a temporary folder holding
    ``lychee_rerank/{core,plugins,adapters}`` as links to this checkout gives the same layout without
    ``pip install``. Returns the environment for subprocesses (``PYTHONPATH`` with that folder first).
    """
    view = Path(tempfile.mkdtemp(prefix="lychee-view-")) / "lychee_rerank"
    view.mkdir()
    for layer in LAYERS:
        (view / layer).symlink_to(ROOT / layer, target_is_directory=True)
    sys.path.insert(0, str(view.parent))
    import lychee_rerank.core

    where = Path(lychee_rerank.core.__file__).resolve()
    if not where.is_relative_to(ROOT):
        raise SystemExit(f"imported lychee_rerank.core from {where}, not from this checkout {ROOT}")
    environment = dict(os.environ)
    environment["PYTHONPATH"] = os.pathsep.join(filter(None, [str(view.parent), os.environ.get("PYTHONPATH")]))
    return environment


# What the project needs on the machine, beyond the standard library; checked before anything runs.
REQUIRED_MODULES = ("torch", "transformers", "tokenizers", "safetensors", "PIL", "numpy", "jinja2", "torchvision")
OPTIONAL_MODULES = ("flash_attn", "pytest")


def preflight() -> dict[str, str | None]:
    """Version (or None when missing) of each module the run needs or can use."""
    found: dict[str, str | None] = {}
    for name in REQUIRED_MODULES + OPTIONAL_MODULES:
        if importlib.util.find_spec(name) is None:
            found[name] = None
            continue
        try:
            module = __import__(name)
            found[name] = str(getattr(module, "__version__", "present"))
        except Exception as error:  # a module that is there but broken (e.g. flash_attn built for another torch)
            found[name] = f"broken: {type(error).__name__}: {error}"
    return found


def load_bench_engine() -> ModuleType:
    """``benchmarks/bench_engine.py``, for its workloads, model builder and measurements."""
    spec = importlib.util.spec_from_file_location("bench_engine", ROOT / "benchmarks" / "bench_engine.py")
    if spec is None or spec.loader is None:
        raise SystemExit("benchmarks/bench_engine.py is missing")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up by name
    spec.loader.exec_module(module)
    return module


# -- the GPU tests ----------------------------------------------------------------------------------


def run_gpu_tests(environment: dict[str, str], timeout_s: float, folder: Path) -> dict[str, Any]:
    """``pytest -m gpu`` in a subprocess; counts and each test's recorded properties from its JUnit XML."""
    junit = folder / "gpu-tests.junit.xml"
    command = [
        sys.executable,
        "-m",
        "pytest",
        "-m",
        "gpu",
        "-rA",
        "-p",
        "no:cacheprovider",
        f"--junitxml={junit}",
        "tests/test_gpu.py",
    ]
    started = time.perf_counter()
    try:
        finished = subprocess.run(
            command, cwd=ROOT, env=environment, capture_output=True, text=True, timeout=timeout_s, check=False
        )
        output, status = finished.stdout + finished.stderr, finished.returncode
    except subprocess.TimeoutExpired as error:
        output, status = f"{error.stdout or ''}{error.stderr or ''}\n(timed out after {timeout_s:.0f} s)", None
    result: dict[str, Any] = {
        "command": " ".join(command[1:]),
        "exit_status": status,
        "seconds": time.perf_counter() - started,
        "summary": _pytest_summary(output),
        "output_tail": output[-6000:],
    }
    result.update(_junit_results(junit))
    return result


def _pytest_summary(output: str) -> str:
    lines = [line for line in output.splitlines() if re.search(r"\d+ (passed|failed|skipped|error)", line)]
    return lines[-1].strip("= ") if lines else "(no summary line)"


def _junit_results(path: Path) -> dict[str, Any]:
    counts = {"passed": 0, "failed": 0, "skipped": 0, "errors": 0}
    tests: list[dict[str, Any]] = []
    if not path.is_file():
        return {"counts": counts, "tests": tests}
    for case in ElementTree.parse(path).getroot().iter("testcase"):
        outcome = "passed"
        message = ""
        for tag, name in (("failure", "failed"), ("error", "errors"), ("skipped", "skipped")):
            element = case.find(tag)
            if element is not None:
                outcome, message = name, (element.get("message") or "")[:300]
                break
        counts[outcome] += 1
        properties = {item.get("name"): item.get("value") for item in case.iter("property")}
        tests.append({"name": case.get("name"), "outcome": outcome, "message": message, "properties": properties})
    return {"counts": counts, "tests": tests}


# -- measuring --------------------------------------------------------------------------------------


def synchronize(device: Any) -> None:
    """Waits for queued device work."""
    import torch

    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timed(device: Any, run: Callable[[], Any]) -> tuple[Any, float]:
    """``run()`` and its wall seconds, the device's queue drained before and after."""
    synchronize(device)
    start = time.perf_counter()
    value = run()
    synchronize(device)
    return value, time.perf_counter() - start


def matmul_flops(device: Any, dtype: Any, size: int, trials: int = 5) -> float:
    """Best achieved FLOP/s of a ``size``² matmul in ``dtype`` on ``device``."""
    import torch

    reps = 20 if device.type == "cuda" else 2
    a = torch.randn(size, size, device=device, dtype=dtype)
    b = torch.randn(size, size, device=device, dtype=dtype)
    best = math.inf
    with torch.inference_mode():
        for _ in range(3):
            torch.matmul(a, b)
        for _ in range(trials):
            _, seconds = timed(device, lambda: [torch.matmul(a, b) for _ in range(reps)])
            best = min(best, seconds / reps)
    return 2 * size**3 / best


def peak_memory(device: Any) -> int | None:
    """Peak CUDA bytes allocated since the last reset (None on the CPU)."""
    import torch

    return int(torch.cuda.max_memory_allocated(device)) if device.type == "cuda" else None


def reset_peak(device: Any) -> None:
    """Starts a new CUDA peak."""
    import torch

    if device.type == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)


def text_of_tokens(tokenizer: Any, rng: random.Random, words: list[str], tokens: int) -> str:
    """A text of exactly ``tokens`` tokens for ``tokenizer`` (about, after re-tokenising)."""
    text = " ".join(rng.choice(words) for _ in range(tokens * 2))
    ids = tokenizer(text, add_special_tokens=False)["input_ids"][:tokens]
    return str(tokenizer.decode(ids))


def build_requests(bench: ModuleType, tokenizer: Any, args: argparse.Namespace) -> dict[str, Any]:
    """The two workloads: (query, documents) plus spare documents for the cold latency measurements."""
    from lychee_rerank.core import Document, Query

    rng = random.Random(args.seed)
    words = bench._ENGLISH
    side = args.image_side
    spare = args.single_pairs + args.batch

    def image_candidates(count: int, offset: int) -> list[Any]:
        return [
            Document(
                text_of_tokens(tokenizer, rng, words, args.image_text_tokens),
                image=bench.synthetic_image(random.Random(offset + index), (side, side)),
            )
            for index in range(count)
        ]

    def text_documents(count: int) -> list[Any]:
        return [Document(text_of_tokens(tokenizer, rng, words, args.text_tokens)) for _ in range(count)]

    return {
        "image+text": {
            "query": Query("a product like the one in this description, in blue"),
            "documents": image_candidates(args.candidates, 1000),
            "spare": image_candidates(spare, 5000),
        },
        "text": {
            "query": Query("revenue grew twelve percent in the third quarter"),
            "documents": text_documents(args.candidates),
            "spare": text_documents(spare),
        },
    }


def run_workload(
    bench: ModuleType, backends: Any, name: str, request: dict[str, Any], args: argparse.Namespace, peak: float
) -> dict[str, Any]:
    """Single-pair latency, batch latency, then every candidate at once, and the reference on a sample."""
    import torch

    engine, device = backends.engine, backends.device
    measuring = bench.Measuring(device, bench.count_parameters(engine.loaded.model))
    query, documents, spare = request["query"], request["documents"], request["spare"]
    result: dict[str, Any] = {"workload": name, "candidates": len(documents)}
    with torch.inference_mode():
        # Warm-up on inputs the timed part never sees: kernels chosen, allocator grown.
        engine.score(query, spare[: args.batch])
        latencies = []
        for document in spare[args.batch : args.batch + args.single_pairs]:
            engine.clear_caches()
            _, seconds = timed(device, lambda document=document: engine.score(query, [document]))
            latencies.append(seconds)
        result["single_pair_latency_ms"] = 1000 * statistics.median(latencies) if latencies else None
        engine.clear_caches()
        _, seconds = timed(device, lambda: engine.score(query, documents[: args.batch]))
        result[f"batch_{args.batch}_latency_ms"] = 1000 * seconds
        result["batch_latency_ms"] = 1000 * seconds
        result["batch"] = args.batch

        engine.clear_caches()
        before = engine.stats.tokens
        weights = torch.cuda.memory_allocated(device) if device.type == "cuda" else None
        reset_peak(device)
        with bench.count_work(engine.loaded.model) as work:
            scores, seconds = timed(device, lambda: engine.score(query, documents))
        path = measuring.result("engine", len(documents), seconds, engine.stats.tokens - before, work)
        path.set_matmul_peak(peak)
    top = peak_memory(device)
    result.update(
        seconds=seconds,
        pairs_per_second=path.pairs_per_second,
        tokens_per_second=path.tokens_per_second,
        mean_tokens_per_pair=path.prompt_tokens / len(documents),
        computed_tokens=path.computed_tokens,
        vision_patches=path.vision_patches,
        matmul_peak_percent=100 * path.matmul_fraction,
        peak_memory_mib=None if top is None else top / 2**20,
        peak_above_weights_mib=None if top is None or weights is None else (top - weights) / 2**20,
        nan_scores=sum(1 for score in scores if math.isnan(score)),
    )

    sample = bench.select_pairs(len(documents), args.reference_pairs)
    if sample:
        with torch.inference_mode():
            reference_scores, reference_seconds = timed(
                device,
                lambda: [
                    backends.reference.score(bench._as_mapping(query), bench._as_mapping(documents[i])) for i in sample
                ],
            )
        reference_rate = len(sample) / reference_seconds
        result.update(
            reference_pairs=len(sample),
            reference_pairs_per_second=reference_rate,
            speedup_over_reference=path.pairs_per_second / reference_rate,
            max_abs_difference=max(abs(scores[i] - value) for i, value in zip(sample, reference_scores, strict=True)),
        )
    return result


def attention_calls(engine: Any, run: Callable[[], Any]) -> tuple[Any, int]:
    """``run()`` and the attention calls it made: SDPA calls (counted by a ``TorchFunctionMode``, which only
    observes), plus the varlen kernels the engine's vision tower counts itself."""
    import torch
    from torch.overrides import TorchFunctionMode

    sdpa = torch.nn.functional.scaled_dot_product_attention
    counted = [0]

    class Counting(TorchFunctionMode):
        def __torch_function__(self, func: Any, types: Any, args: Any = (), kwargs: Any = None) -> Any:
            if func is sdpa:
                counted[0] += 1
            return func(*args, **(kwargs or {}))

    varlen = engine.vision_attention in ("flash-attn-varlen", "torch-varlen")
    before = engine.stats.vision_attention_calls
    with Counting():
        value = run()
    return value, counted[0] + (engine.stats.vision_attention_calls - before if varlen else 0)


def run_vision_tower(bench: ModuleType, backends: Any, request: dict[str, Any], count: int) -> dict[str, Any]:
    """The same distinct images through transformers' tower forward (before) and the engine's (after)."""
    import torch

    from lychee_rerank.core.local.engine import ScoringEngine

    engine, device = backends.engine, backends.engine.loaded.device
    before = ScoringEngine(engine.loaded, engine.profile, vision_attention="transformers")
    documents = request["documents"][:count]
    images, _, keys = engine._prepare_images(request["query"], documents)
    prepared = [images[key] for key in dict.fromkeys(key for key in keys if key is not None)]
    result: dict[str, Any] = {
        "images": len(prepared),
        "patches_per_image": statistics.mean(image.token_count for image in prepared),
        "dtype": str(engine.loaded.dtype).removeprefix("torch."),
        "path": engine.vision_attention,
    }
    outputs = {}
    with torch.inference_mode():
        for label, runner in (("before", before), ("after", engine)):
            runner._encode_images(prepared[:2])  # warm-up
            _, seconds = timed(device, lambda runner=runner: runner._encode_images(prepared))
            outputs[label], calls = attention_calls(runner, lambda runner=runner: runner._encode_images(prepared))
            result[f"{label}_seconds"] = seconds
            result[f"{label}_attention_calls"] = calls
        alone, single_seconds = timed(device, lambda: [engine._encode_images([image])[0] for image in prepared])
    result["one_by_one_seconds"] = single_seconds
    result["speedup"] = result["before_seconds"] / result["after_seconds"]
    result["max_abs_feature_difference"] = max(
        float((a["features"].float() - b["features"].float()).abs().max())
        for a, b in zip(outputs["after"], outputs["before"], strict=True)
    )
    result["max_abs_alone_difference"] = max(
        float((a["features"].float() - b["features"].float()).abs().max())
        for a, b in zip(outputs["after"], alone, strict=True)
    )
    return result


_GEMM = ("gemm", "nvjet", "cutlass", "xmma", "cublas", "matmul")
_ATTENTION_KERNELS = ("flash", "fmha", "attention", "sdpa", "cudnn")


def profile_request(engine: Any, request: dict[str, Any], vision_attention: str | None = None) -> dict[str, Any]:
    """One cold request under the torch profiler: where its time goes, and how many kernels it issues.

    CPU seconds against device seconds says whether launches or arithmetic set the pace; the device's
    time is split into matrix multiplications, attention and the rest (elementwise, copies, norms) by
    kernel name; ``vision_share`` is the vision tower's part of the request's wall time.
    """
    import torch
    from torch.autograd import DeviceType
    from torch.profiler import ProfilerActivity, profile

    from lychee_rerank.core.local.engine import ScoringEngine

    if vision_attention is not None:
        engine = ScoringEngine(engine.loaded, engine.profile, vision_attention=vision_attention)
    device = engine.loaded.device
    query, documents = request["query"], request["documents"]
    images, _, keys = engine._prepare_images(query, documents)
    prepared = [images[key] for key in dict.fromkeys(key for key in keys if key is not None)]
    with torch.inference_mode():
        engine.score(query, request["spare"][:4])  # warm-up
        engine.clear_caches()
        _, whole = timed(device, lambda: engine.score(query, documents))
        vision = timed(device, lambda: engine._encode_images(prepared))[1] if prepared else 0.0
        engine.clear_caches()
        _, calls = attention_calls(engine, lambda: engine.score(query, documents))
        engine.clear_caches()
        activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.type == "cuda" else [])
        with profile(activities=activities) as profiler:
            engine.score(query, documents)
            synchronize(device)
    averages = profiler.key_averages()
    self_cpu = sum(event.self_cpu_time_total for event in averages) / 1e6
    result: dict[str, Any] = {
        "vision_attention": engine.vision_attention,
        "wall_seconds": whole,
        "vision_seconds": vision,
        "vision_share": vision / whole if whole else None,
        "attention_calls": calls,
        "self_cpu_seconds": self_cpu,
        "aten_calls": sum(event.count for event in averages if event.key.startswith("aten::")),
    }
    if device.type == "cuda":
        kernels = [event for event in averages if event.device_type == DeviceType.CUDA]
        device_seconds = sum(event.self_device_time_total for event in kernels) / 1e6

        def share(names: tuple[str, ...]) -> float:
            picked = [event for event in kernels if any(name in event.key.lower() for name in names)]
            return sum(event.self_device_time_total for event in picked) / 1e6 / device_seconds

        gemm, attention = share(_GEMM), share(_ATTENTION_KERNELS)
        result.update(
            device_seconds=device_seconds,
            kernels_launched=sum(event.count for event in kernels),
            device_busy=device_seconds / whole,
            gemm_share=gemm,
            attention_share=attention,
            other_share=1 - gemm - attention,
        )
    sort = "self_cuda_time_total" if device.type == "cuda" else "self_cpu_time_total"
    result["table"] = averages.table(sort_by=sort, row_limit=15, max_name_column_width=60)
    return result


def float32_parity(bench: ModuleType, args: argparse.Namespace, pairs: int) -> dict[str, Any]:
    """Engine against the naive reference on the shape in float32: the check of the engine's logic at full
    size (random weights; the spread of the scores says the comparison is not between constants)."""
    import torch

    options = argparse.Namespace(
        device=args.device, dtype="float32", max_pixels=None, max_batch_tokens=bench.DEFAULT_MAX_BATCH_TOKENS, seed=1
    )
    backends = bench.build_in_memory_backends(args.shape, options)
    engine = backends.engine
    requests = build_requests(bench, engine.loaded.tokenizer, args)
    result: dict[str, Any] = {"pairs": pairs, "vision_attention": engine.vision_attention}
    with torch.inference_mode():
        for name, request in requests.items():
            query, documents = request["query"], request["documents"][:pairs]
            scores = engine.score(query, documents)
            expected = [backends.reference.score(bench._as_mapping(query), bench._as_mapping(d)) for d in documents]
            result[name] = {
                "max_abs_difference": max(abs(a - b) for a, b in zip(scores, expected, strict=True)),
                "score_spread": max(scores) - min(scores),
            }
    del backends, engine
    if args.device.startswith("cuda"):
        torch.cuda.empty_cache()
    return result


@contextlib.contextmanager
def step(report: dict[str, Any], name: str, deadline: float, needs_s: float) -> Iterator[dict[str, Any]]:
    """Runs one step of the check, recording its seconds, or its error, or that it did not fit in time."""
    entry: dict[str, Any] = {}
    report["steps"][name] = entry
    left = deadline - time.monotonic()
    if left < needs_s:
        entry["status"] = f"skipped: {left:.0f} s left of the time budget, about {needs_s:.0f} s needed"
        print(f"[{name}] {entry['status']}", file=sys.stderr)
        yield {"skip": True}
        return
    started = time.perf_counter()
    print(f"[{name}] ...", file=sys.stderr, flush=True)
    try:
        yield entry
        entry.setdefault("status", "ok")
    except Exception as error:
        entry["status"] = f"error: {type(error).__name__}: {error}"
        entry["traceback"] = traceback.format_exc()[-3000:]
    entry["seconds"] = time.perf_counter() - started
    print(f"[{name}] {entry['status']} ({entry['seconds']:.1f} s)", file=sys.stderr, flush=True)


# -- the report -------------------------------------------------------------------------------------


def _cell(value: Any) -> str:
    if value is None:
        return "—"
    if isinstance(value, float):
        if math.isnan(value):
            return "nan"
        return f"{value:,.0f}" if abs(value) >= 100 else f"{value:.3g}"
    return str(value)


def markdown(report: dict[str, Any]) -> str:
    """The Markdown report: environment, tests, workloads, vision batching, step status."""
    env = report["environment"]
    lines = [
        f"# GPU check, {env['date']}: {env['device_name']}" + (" (dry run)" if env["dry_run"] else ""),
        "",
        f"- shape {env['shape']} ({env.get('parameters_b', 0) * 1000:,.0f}M parameters), dtype {env['dtype']}, "
        f"attention {env.get('attention', '?')}; torch {env['modules'].get('torch')}, transformers "
        f"{env['modules'].get('transformers')}, flash_attn {env['modules'].get('flash_attn') or 'not installed'}",
        f"- matmul {env.get('matmul_size', '?')}² {env['dtype']}: {_cell(env.get('matmul_tflops'))} TFLOP/s "
        "measured in this run",
        f"- total {report.get('seconds', 0):.0f} s",
        "",
    ]
    tests = report["steps"].get("gpu tests", {})
    lines += ["## GPU tests (`pytest -m gpu`)", "", f"{tests.get('status', '—')}: {tests.get('summary', '')}", ""]
    if tests.get("tests"):
        lines += ["| test | outcome | recorded |", "| --- | --- | --- |"]
        for test in tests["tests"]:
            recorded = ", ".join(f"{key}={value}" for key, value in test["properties"].items()) or test["message"]
            lines.append(f"| {test['name']} | {test['outcome']} | {recorded.replace('|', '/')} |")
        lines.append("")
    workloads = report.get("workloads", [])
    if workloads:
        columns = [
            ("workload", "workload"),
            ("candidates", "candidates"),
            ("mean_tokens_per_pair", "tokens/pair"),
            ("single_pair_latency_ms", "1 pair ms"),
            ("batch_latency_ms", f"batch {workloads[0].get('batch')} ms"),
            ("seconds", "all s"),
            ("pairs_per_second", "pairs/s"),
            ("tokens_per_second", "tokens/s"),
            ("matmul_peak_percent", "% matmul peak"),
            ("peak_memory_mib", "peak MiB"),
            ("peak_above_weights_mib", "above weights MiB"),
            ("reference_pairs_per_second", "reference pairs/s"),
            ("speedup_over_reference", "speed-up"),
            ("max_abs_difference", "max abs Δ"),
            ("nan_scores", "NaN scores"),
        ]
        lines += ["## Engine, all candidates of one query", ""]
        lines.append("| " + " | ".join(title for _, title in columns) + " |")
        lines.append("| " + " | ".join("---" for _ in columns) + " |")
        for workload in workloads:
            lines.append("| " + " | ".join(_cell(workload.get(key)) for key, _ in columns) + " |")
        lines.append("")
    vision = report.get("vision_tower")
    if vision:
        lines += [
            "## Vision tower: transformers' forward (before) and the engine's (after), same images",
            "",
            f"{vision['images']} images of {vision['patches_per_image']:.0f} patches, {vision['dtype']}, engine path "
            f"{vision['path']}: before {vision['before_seconds'] * 1000:.1f} ms and "
            f"{vision['before_attention_calls']:,} attention calls, after {vision['after_seconds'] * 1000:.1f} ms and "
            f"{vision['after_attention_calls']:,} calls: {vision['speedup']:.2f}× faster; one image per forward "
            f"{vision['one_by_one_seconds'] * 1000:.1f} ms. Max |feature Δ| after vs before "
            f"{vision['max_abs_feature_difference']:.1e}, batched vs alone {vision['max_abs_alone_difference']:.1e}",
            "",
        ]
    profiles = report.get("profiles") or {}
    if profiles:
        columns = [
            ("vision_attention", "vision attention"),
            ("wall_seconds", "wall s"),
            ("vision_share", "vision share"),
            ("attention_calls", "attention calls"),
            ("aten_calls", "aten calls"),
            ("kernels_launched", "kernels"),
            ("self_cpu_seconds", "CPU s"),
            ("device_seconds", "GPU s"),
            ("device_busy", "GPU busy"),
            ("gemm_share", "GEMM share"),
            ("attention_share", "attention share"),
            ("other_share", "other share"),
        ]
        lines += ["## Where a request's time goes (torch profiler, one cold request)", ""]
        lines.append("| request | " + " | ".join(title for _, title in columns) + " |")
        lines.append("| --- | " + " | ".join("---" for _ in columns) + " |")
        for label, entry in profiles.items():
            lines.append(f"| {label} | " + " | ".join(_cell(entry.get(key)) for key, _ in columns) + " |")
        lines.append("")
        for label, entry in profiles.items():
            lines += [
                f"<details><summary>top operations, {label}</summary>",
                "",
                "```",
                entry["table"],
                "```",
                "",
                "</details>",
                "",
            ]
    parity = report.get("float32_parity")
    if parity:
        lines += [f"## Engine against the naive reference, {env['shape']} shape in float32", ""]
        for name in ("image+text", "text"):
            if name in parity:
                lines.append(
                    f"- {name}: max |Δ| {parity[name]['max_abs_difference']:.1e} over {parity['pairs']} pairs "
                    f"(scores spread over {parity[name]['score_spread']:.2f})"
                )
        lines.append("")
    lines += ["## Steps", "", "| step | status | seconds |", "| --- | --- | --- |"]
    for name, entry in report["steps"].items():
        lines.append(f"| {name} | {entry.get('status', '?')} | {_cell(entry.get('seconds'))} |")
    return "\n".join(lines) + "\n"


# -- command line -----------------------------------------------------------------------------------


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    """The command line; ``--dry-run`` changes the defaults to a short CPU run."""
    parser = argparse.ArgumentParser(description="Prove the GPU path in one short run (see the module docstring).")
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results", help="report folder")
    parser.add_argument("--dry-run", action="store_true", help="run every step on the CPU with the small shape")
    parser.add_argument("--shape", default=None, help="model shape (default 7b; small with --dry-run)")
    parser.add_argument("--device", default=None, help="default cuda (cpu with --dry-run)")
    parser.add_argument("--dtype", default="bfloat16", help="engine dtype (default bfloat16)")
    parser.add_argument("--candidates", type=int, default=None, help="candidates per workload (100; 8 dry)")
    parser.add_argument("--batch", type=int, default=None, help="the batch-latency batch size (50; 4 dry)")
    parser.add_argument("--single-pairs", type=int, default=5, help="pairs timed alone, median kept (5)")
    parser.add_argument("--reference-pairs", type=int, default=None, help="pairs the reference scores (16; 2 dry)")
    parser.add_argument("--vision-images", type=int, default=None, help="images for the vision batch (32; 6 dry)")
    parser.add_argument("--image-side", type=int, default=None, help="candidate image side in pixels (448; 224 dry)")
    parser.add_argument("--image-text-tokens", type=int, default=None, help="text tokens beside each image (50)")
    parser.add_argument("--text-tokens", type=int, default=128, help="tokens per text document (128)")
    parser.add_argument("--parity-pairs", type=int, default=None, help="pairs per workload, float32 parity (8; 2 dry)")
    parser.add_argument("--skip-gpu-tests", action="store_true", help="do not run pytest -m gpu")
    parser.add_argument("--tests-timeout", type=float, default=240, help="seconds allowed to the GPU tests")
    parser.add_argument("--time-budget", type=float, default=450, help="seconds for the whole run (450)")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    dry = args.dry_run
    defaults = {
        "shape": "small" if dry else "7b",
        "device": "cpu" if dry else "cuda",
        "candidates": 8 if dry else 100,
        "batch": 4 if dry else 50,
        "reference_pairs": 2 if dry else 16,
        "parity_pairs": 2 if dry else 8,
        "vision_images": 6 if dry else 32,
        "image_side": 224 if dry else 448,
        "image_text_tokens": 50,
    }
    for key, value in defaults.items():
        if getattr(args, key) is None:
            setattr(args, key, value)
    args.single_pairs = min(args.single_pairs, 2) if dry else args.single_pairs
    args.batch = min(args.batch, args.candidates)
    return args


def main(argv: list[str] | None = None) -> int:
    """Runs every step, writes the JSON and Markdown reports, prints where; 0 when all went well."""
    args = parse_args(argv)
    started = time.monotonic()
    deadline = started + args.time_budget
    os.environ.setdefault("HF_HUB_OFFLINE", "1")  # no model hub: every model here is random
    modules = preflight()
    missing = [name for name in REQUIRED_MODULES if modules[name] is None or modules[name].startswith("broken")]
    if missing:
        print(f"missing or broken: {', '.join(missing)}; install them (wheels can be carried offline)", file=sys.stderr)
        return 2
    environment_for_tests = make_project_importable()
    import torch

    if args.device.startswith("cuda") and not torch.cuda.is_available():
        print("no CUDA GPU is visible; run with --dry-run for the CPU rehearsal", file=sys.stderr)
        return 2
    device = torch.device(args.device)
    dtype = getattr(torch, args.dtype)
    bench = load_bench_engine()
    now = datetime.datetime.now(datetime.timezone.utc)
    device_name = torch.cuda.get_device_name(device) if device.type == "cuda" else bench.cpu_name()
    report: dict[str, Any] = {
        "environment": {
            "date": now.strftime("%Y-%m-%d %H:%M UTC"),
            "dry_run": args.dry_run,
            "shape": args.shape,
            "device": str(device),
            "device_name": device_name,
            "dtype": args.dtype,
            "modules": modules,
            "python": sys.version.split()[0],
            "platform": platform.platform(),
            "cpu_count": os.cpu_count(),
            "load_average_at_start": os.getloadavg()[0],
            "arguments": {key: str(value) for key, value in vars(args).items()},
        },
        "steps": {},
    }
    env = report["environment"]
    args.out.mkdir(parents=True, exist_ok=True)

    with step(report, "gpu tests", deadline, 60) as entry:
        if args.skip_gpu_tests:
            entry["status"] = "skipped: --skip-gpu-tests"
        elif not entry.get("skip"):
            if modules["pytest"] is None:
                raise RuntimeError("pytest is not installed")
            with tempfile.TemporaryDirectory() as folder:
                timeout = min(args.tests_timeout, max(deadline - time.monotonic() - 120, 30))
                entry.update(run_gpu_tests(environment_for_tests, timeout, Path(folder)))
            counts = entry["counts"]
            entry["status"] = "ok" if entry["exit_status"] in (0, 5) and not counts["failed"] else "failed"

    with step(report, "matmul peak", deadline, 10) as entry:
        if not entry.get("skip"):
            size = 8192 if device.type == "cuda" else 1024
            flops = matmul_flops(device, dtype, size)
            env.update(matmul_size=size, matmul_tflops=flops / 1e12)
    peak = env.get("matmul_tflops", math.nan) * 1e12

    backends = None
    with step(report, f"build {args.shape}", deadline, 30) as entry:
        if not entry.get("skip"):
            options = argparse.Namespace(
                device=str(device), dtype=args.dtype, max_pixels=None, max_batch_tokens=None, seed=args.seed
            )
            options.max_batch_tokens = bench.DEFAULT_MAX_BATCH_TOKENS
            backends = bench.build_in_memory_backends(args.shape, options)
            params = bench.count_parameters(backends.engine.loaded.model)
            env.update(
                parameters_b=params.total / 1e9,
                attention=backends.engine.loaded.attn_implementation,
                vision_attention=backends.engine.vision_attention,
                batch_token_limit=backends.engine.batch_token_limit,
            )
            if device.type == "cuda":
                env["weights_mib"] = torch.cuda.memory_allocated(device) / 2**20

    report["workloads"] = []
    if backends is not None:
        requests = build_requests(bench, backends.engine.loaded.tokenizer, args)
        for name, request in requests.items():
            with step(report, f"workload {name}", deadline, 20) as entry:
                if not entry.get("skip"):
                    report["workloads"].append(run_workload(bench, backends, name, request, args, peak))
        with step(report, "vision tower", deadline, 15) as entry:
            if not entry.get("skip"):
                report["vision_tower"] = run_vision_tower(bench, backends, requests["image+text"], args.vision_images)
        report["profiles"] = {}
        for label, name, path in (
            ("image+text", "image+text", None),
            ("image+text, transformers' tower", "image+text", "transformers"),
            ("text", "text", None),
        ):
            with step(report, f"profile {label}", deadline, 30) as entry:
                if not entry.get("skip"):
                    report["profiles"][label] = profile_request(backends.engine, requests[name], path)
        if args.parity_pairs:
            del backends  # the float32 model is built next; free the bf16 one first
            if device.type == "cuda":
                torch.cuda.empty_cache()
            with step(report, f"{args.shape} float32 parity", deadline, 60) as entry:
                if not entry.get("skip"):
                    report["float32_parity"] = float32_parity(bench, args, args.parity_pairs)

    env["load_average_at_end"] = os.getloadavg()[0]
    report["seconds"] = time.monotonic() - started
    slug = re.sub(r"[^A-Za-z0-9]+", "-", device_name).strip("-").lower()[:40]
    stem = f"gpu_check-{now.strftime('%Y%m%d-%H%M')}-{slug}" + ("-dry-run" if args.dry_run else "")
    json_path, markdown_path = args.out / f"{stem}.json", args.out / f"{stem}.md"
    json_path.write_text(json.dumps(report, indent=2, ensure_ascii=False, default=str) + "\n")
    markdown_path.write_text(markdown(report))
    print(markdown(report))
    print(f"reports: {json_path} and {markdown_path}")
    statuses = [str(entry.get("status", "")) for entry in report["steps"].values()]
    failed = [status for status in statuses if not status.startswith(("ok", "skipped"))]
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
