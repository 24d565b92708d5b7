"""bf16 against float32 on the CPU, and the batched vision tower against one forward per image, in one run.

Run from the repository root (the ``small`` checkpoint is the one ``bench_engine.py`` writes):

    .venv/bin/python benchmarks/bench_cpu_dtype.py --threads 1
    .venv/bin/python benchmarks/bench_cpu_dtype.py --shape tiny --docs 4 --rounds 1   # a quick smoke run

For each dtype (float32, bfloat16) the same checkpoint is loaded and the same requests are scored in
turn, round after round (so that a burst of load from other processes hits both), by the engine and by
the naive reference on a sample. Reported per dtype and workload: the engine's pairs/s and tokens/s
(best round, wall clock) and CPU seconds per pair (``time.process_time``, far less disturbed by other
processes on a shared machine when ``--threads 1``), the engine's speed-up over the reference in that
dtype, and the largest |bf16 − float32| score. Then the vision tower: the same distinct images encoded
in one forward and one forward each, in both dtypes, with the ratio.

bf16 on a CPU pays only where the CPU has bf16 matrix instructions (``avx512_bf16`` or ``amx_bf16`` in
``lscpu``'s flags); elsewhere it is slower than float32. There, the linear layers' weights are reordered
for oneDNN once at load time (``core/local/packing.py``); a third configuration, "bfloat16 unpacked",
loads bf16 without that, to show what it gains in the same run.
"""

from __future__ import annotations

import argparse
import importlib.util
import sys
import time
from functools import partial
from pathlib import Path
from typing import Any

import torch

from lychee_rerank.core.local.engine import ScoringEngine
from lychee_rerank.core.local.loading import load_model
from lychee_rerank.core.profiles import DEFAULT_PROFILE, get_profile
from lychee_rerank.core.testing.reference import ReferenceScorer

HERE = Path(__file__).resolve().parent


def _bench_engine() -> Any:
    spec = importlib.util.spec_from_file_location("bench_engine", HERE / "bench_engine.py")
    if spec is None or spec.loader is None:
        raise SystemExit("benchmarks/bench_engine.py is missing")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


def _clock(run: Any) -> tuple[Any, float, float]:
    wall, cpu = time.perf_counter(), time.process_time()
    value = run()
    return value, time.perf_counter() - wall, time.process_time() - cpu


def _score_each(reference: ReferenceScorer, pairs: list[tuple[dict[str, Any], dict[str, Any]]]) -> list[float]:
    return [reference.score(query, document) for query, document in pairs]


def _encode_each(engine: Any, prepared: list[Any]) -> list[Any]:
    return [engine._encode_images([image]) for image in prepared]


def cpu_flags() -> list[str]:
    """The bf16-related flags of this CPU (from /proc/cpuinfo)."""
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return []
    flags = next((line.split(":", 1)[1].split() for line in text.splitlines() if line.startswith("flags")), [])
    return sorted(flag for flag in flags if "bf16" in flag or flag.startswith("amx"))


def main(argv: list[str] | None = None) -> int:
    """Runs both comparisons and prints Markdown tables."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shape", default="small", choices=["tiny", "medium", "small"])
    parser.add_argument("--docs", type=int, default=32, help="documents per request (32)")
    parser.add_argument("--rounds", type=int, default=2, help="rounds over both dtypes, best kept (2)")
    parser.add_argument("--reference-pairs", type=int, default=8, help="pairs the reference scores per round (8)")
    parser.add_argument("--vision-images", type=int, default=8, help="images for the vision comparison (8)")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's)")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    bench = _bench_engine()
    folder = bench.checkpoint_folder(args.shape)
    profile = get_profile(DEFAULT_PROFILE)
    # (name, dtype, weights reordered for oneDNN where that applies)
    configurations = {
        "float32": ("float32", True),
        "bfloat16": ("bfloat16", True),
        "bfloat16 unpacked": ("bfloat16", False),
    }
    engines = {
        name: ScoringEngine(load_model(str(folder), profile, device="cpu", dtype=dtype, pack_weights=pack), profile)
        for name, (dtype, pack) in configurations.items()
    }
    dtypes = ("float32", "bfloat16")
    references = {dtype: ReferenceScorer.from_pretrained(folder, dtype=getattr(torch, dtype)) for dtype in dtypes}
    workloads = [bench.build_workload(kind, 1, args.docs, seed=0, image_scale=0.5) for kind in ("text", "image")]
    rows: dict[tuple[str, str], dict[str, Any]] = {}
    scores: dict[tuple[str, str], list[float]] = {}
    with torch.inference_mode():
        for engine in engines.values():  # warm-up
            warmup = bench.build_warmup("image", 2, 0.5)
            engine.score(*warmup.requests[0])
        for _ in range(args.rounds):
            for workload in workloads:
                query, documents = workload.requests[0]
                sample = bench.select_pairs(len(documents), args.reference_pairs)
                for name, (dtype, _) in configurations.items():
                    engine = engines[name]
                    engine.clear_caches()
                    before = engine.stats.tokens
                    result, wall, cpu = _clock(partial(engine.score, query, documents))
                    pairs = [(bench._as_mapping(query), bench._as_mapping(documents[i])) for i in sample]
                    _, reference_wall, reference_cpu = _clock(partial(_score_each, references[dtype], pairs))
                    row = rows.setdefault((workload.name, name), {"wall": 1e9, "cpu": 1e9, "ref_wall": 1e9})
                    row["tokens"] = engine.stats.tokens - before
                    row["wall"], row["cpu"] = min(row["wall"], wall), min(row["cpu"], cpu)
                    row["ref_wall"] = min(row["ref_wall"], reference_wall / len(sample))
                    row["ref_cpu"] = min(row.get("ref_cpu", 1e9), reference_cpu / len(sample))
                    scores[(workload.name, name)] = result
    print(f"CPU bf16 flags: {', '.join(cpu_flags()) or 'none'}; torch threads {torch.get_num_threads()}\n")
    columns = [
        "workload",
        "configuration",
        "pairs/s",
        "tokens/s",
        "CPU s/pair",
        "vs reference (wall)",
        "vs reference (CPU)",
    ]
    print("| " + " | ".join([*columns, "max abs Δ vs float32"]) + " |")
    print("| --- | --- | --- | --- | --- | --- | --- | --- |")
    for workload in workloads:
        for name in configurations:
            row = rows[(workload.name, name)]
            pairs = len(workload.requests[0][1])
            difference = max(
                abs(a - b)
                for a, b in zip(scores[(workload.name, name)], scores[(workload.name, "float32")], strict=True)
            )
            print(
                f"| {workload.name} | {name} | {pairs / row['wall']:.2f} | {row['tokens'] / row['wall']:,.0f} | "
                f"{row['cpu'] / pairs:.3f} | {row['ref_wall'] * pairs / row['wall']:.2f}× | "
                f"{row['ref_cpu'] * pairs / row['cpu']:.2f}× | {difference:.1e} |"
            )
    for workload in workloads:
        for name in ("bfloat16", "bfloat16 unpacked"):
            ratio_wall = rows[(workload.name, "float32")]["wall"] / rows[(workload.name, name)]["wall"]
            ratio_cpu = rows[(workload.name, "float32")]["cpu"] / rows[(workload.name, name)]["cpu"]
            print(f"\n{workload.name}: {name} is {ratio_wall:.2f}× float32 (wall), {ratio_cpu:.2f}× (CPU time)", end="")
        packing = rows[(workload.name, "bfloat16 unpacked")]["cpu"] / rows[(workload.name, "bfloat16")]["cpu"]
        print(f"\n{workload.name}: reordered weights make bf16 {packing:.2f}× faster (CPU time)", end="")
    print("\n\n| vision tower | images | patches/image | one forward s | one per image s | ratio |")
    print("| --- | --- | --- | --- | --- | --- |")
    image_workload = workloads[1]
    for name, engine in engines.items():
        query, documents = image_workload.requests[0]
        images, _, keys = engine._prepare_images(query, documents[: args.vision_images])
        prepared = [images[key] for key in dict.fromkeys(key for key in keys if key is not None)]
        with torch.inference_mode():
            engine._encode_images(prepared[:2])
            batched = alone = 1e9
            for _ in range(args.rounds):
                batched = min(batched, _clock(partial(engine._encode_images, prepared))[2])
                alone = min(alone, _clock(partial(_encode_each, engine, prepared))[2])
        patches = sum(image.token_count for image in prepared) / len(prepared)
        print(
            f"| {name} (CPU time) | {len(prepared)} | {patches:.0f} | {batched:.3f} | {alone:.3f} | "
            f"{alone / batched:.2f}× |"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
