"""The memory budget checked on the CPU: measured peak of a forward against ``max_batch_memory``, and what
the budget means for the 7B shape.

Run from the repository root:

    .venv/bin/python benchmarks/memory_budget.py                       # medium shape, 40 candidates, 32 MiB
    .venv/bin/python benchmarks/memory_budget.py --budget-mib 16 --dtype float32

The CPU has no allocator statistics like CUDA's ``max_memory_allocated``; the peak here is read off the
torch profiler's allocation events (each op's own allocations and every free, in time order), over
``score_encoded`` only: the request's images are decoded and preprocessed first, outside the
measurement, as on a GPU host they stay in host memory. The vision cache is off, so the peak is one
forward's activations plus the shared prefix's cache and the batch's image features.

Then, from the same estimate (:class:`~lychee_rerank.core.local.budget.MemoryModel`), the 7B shape at the
default budget: tokens per language-model batch, patches per vision forward, and the batches that the
GPU check's 100 image+text candidates (448² images, about 400 tokens each) are split into.
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import random
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch.profiler import ProfilerActivity, profile

from lychee_rerank.core import Document, LocalReranker, Query
from lychee_rerank.core.local.budget import DEFAULT_MAX_BATCH_MEMORY, MemoryModel
from lychee_rerank.core.testing.checkpoint import SHAPES, build_config, build_tokenizer, write_tiny_checkpoint

ROOT = Path(__file__).resolve().parent.parent


def peak_allocated(run: Callable[[], Any]) -> int:
    """The most CPU bytes torch held at once during ``run``, above what it held before."""
    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as profiler:
        run()
    changes = []
    for event in profiler.events():
        change = event.cpu_memory_usage if event.name == "[memory]" else event.self_cpu_memory_usage
        if change:
            changes.append((event.time_range.start, change))
    live = top = 0
    for _, change in sorted(changes):
        live += change
        top = max(top, live)
    return top


def _bench_engine() -> Any:
    spec = importlib.util.spec_from_file_location("bench_engine", ROOT / "benchmarks" / "bench_engine.py")
    if spec is None or spec.loader is None:
        raise SystemExit("benchmarks/bench_engine.py is missing")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


def seven_b_lines(budget: int) -> list[str]:
    """What ``budget`` means for Qwen2.5-VL-7B in bf16, from the estimate alone."""
    config = build_config(SHAPES["7b"], build_tokenizer(SHAPES["7b"].vocab_target))
    memory = MemoryModel.of(config, torch.bfloat16)
    tokens, patches = memory.token_limit(budget), memory.patch_limit(budget)
    prefix, own = 140, 260  # the GPU check's image+text pair: ~400 tokens, the query part shared
    rows = tokens // (own + memory.row_overhead(prefix))
    return [
        f"7b, bf16, budget {budget / 2**20:,.0f} MiB: {memory.token_bytes / 1024:.0f} KB per token, "
        f"{memory.context_bytes / 1024:.0f} KB per attended token and row, {memory.patch_bytes / 1024:.0f} KB per "
        f"vision patch;",
        f"  batches of at most {tokens:,} tokens ({rows} image+text pairs of {own} own tokens after a {prefix}-token "
        f"prefix: {memory.batch_bytes(rows, own, prefix) / 2**20:,.0f} MiB), vision forwards of at most "
        f"{patches:,} patches ({patches // 1024} images of 448²)",
    ]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shape", default="medium", help="random checkpoint shape (medium)")
    parser.add_argument("--candidates", type=int, default=40)
    parser.add_argument("--budget-mib", type=float, default=32)
    parser.add_argument("--dtype", default="bfloat16,float32", help="comma-separated (bfloat16,float32)")
    args = parser.parse_args(argv)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    bench = _bench_engine()
    folder = write_tiny_checkpoint(tempfile.mkdtemp(prefix="memory-budget-"), shape=args.shape)
    rng = random.Random(100)
    words = ("white", "linen", "shirt", "red", "summer", "dress", "running", "shoes", "leather", "handbag")
    documents = [
        Document(" ".join(rng.choice(words) for _ in range(180)), image=bench.synthetic_image(rng, (224, 224)))
        for _ in range(args.candidates)
    ]
    query = Query("a product like this one", image=bench.synthetic_image(rng, (224, 224)))
    budget = int(args.budget_mib * 2**20)
    print(
        "| shape | dtype | budget MiB | measured peak MiB | peak / budget | batches | tokens/batch | patches/forward |"
    )
    print("| --- | --- | --- | --- | --- | --- | --- | --- |")
    for dtype in args.dtype.split(","):
        reranker = LocalReranker(
            model=str(folder), device="cpu", dtype=dtype, max_batch_memory=budget, vision_cache_bytes=0
        )
        engine = reranker.engine
        engine.score(query, documents[:2])
        encoded = engine.encode(query, documents)
        batches = engine.stats.batches
        peak = peak_allocated(lambda engine=engine, encoded=encoded: engine.score_encoded([encoded]))
        print(
            f"| {args.shape} | {dtype} | {budget / 2**20:.0f} | {peak / 2**20:.1f} | {peak / budget:.2f} | "
            f"{engine.stats.batches - batches} | ≤ {engine.batch_token_limit:,} | "
            f"≤ {engine.memory.patch_limit(budget):,} |"
        )
    print()
    print("\n".join(seven_b_lines(DEFAULT_MAX_BATCH_MEMORY)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
