"""The vision tower before and after: transformers' forward (one attention call per window) against the
engine's (one call per layer), same weights, same images, same run.

Run from the repository root (CPU; ``--device cuda`` on a GPU):

    .venv/bin/python benchmarks/bench_vision.py --shape small --images 16 --side 448
    .venv/bin/python benchmarks/bench_vision.py --shape tiny --images 4 --side 224 --rounds 1

For each path (``transformers``: the model's own ``get_image_features``; the engine's default, e.g.
``sdpa-packed`` on a CPU) it reports, per vision forward over ``--images`` distinct images of ``--side``
pixels (and once more over images of mixed sizes, with odd grids):

- attention calls (``scaled_dot_product_attention`` calls, counted by a ``TorchFunctionMode``, plus the
  varlen kernels the engine's tower counts itself);
- aten operations dispatched (a ``TorchDispatchMode`` count: on a GPU, about the kernel launches the
  CPU has to issue);
- CPU seconds (``time.process_time``, best of ``--rounds``) and wall seconds;
- the largest feature difference from transformers' forward;

and for a whole request (a text query against ``--images`` image+text candidates, every cache cleared
first): CPU seconds, attention calls, and the vision tower's share of the request's CPU time.
Ratios are within this run; on a shared CPU an absolute time means little.
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import random
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch.overrides import TorchFunctionMode
from torch.utils._python_dispatch import TorchDispatchMode

from lychee_rerank.core import Document, LocalReranker, Query
from lychee_rerank.core.local.engine import _PreparedImage
from lychee_rerank.core.local.vision import FLASH_VARLEN, TORCH_VARLEN, TRANSFORMERS

ROOT = Path(__file__).resolve().parent.parent


def _bench_engine() -> Any:
    spec = importlib.util.spec_from_file_location("bench_engine", ROOT / "benchmarks" / "bench_engine.py")
    if spec is None or spec.loader is None:
        raise SystemExit("benchmarks/bench_engine.py is missing")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


class Counting(TorchFunctionMode):
    """Counts ``scaled_dot_product_attention`` calls."""

    def __init__(self) -> None:
        super().__init__()
        self.attention = 0

    def __torch_function__(
        self, func: Callable[..., Any], types: Any, args: tuple[Any, ...] = (), kwargs: dict[str, Any] | None = None
    ) -> Any:
        if func is torch.nn.functional.scaled_dot_product_attention:
            self.attention += 1
        return func(*args, **(kwargs or {}))


class Dispatched(TorchDispatchMode):
    """Counts aten operations dispatched."""

    def __init__(self) -> None:
        super().__init__()
        self.operations = 0

    def __torch_dispatch__(
        self, func: Callable[..., Any], types: Any, args: tuple[Any, ...] = (), kwargs: dict[str, Any] | None = None
    ) -> Any:
        self.operations += 1
        return func(*args, **(kwargs or {}))


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def measure(run: Callable[[], Any], device: torch.device, rounds: int) -> dict[str, float]:
    """Best CPU and wall seconds of ``run`` over ``rounds``, then its counts (one more, counted, run)."""
    best_cpu = best_wall = float("inf")
    for _ in range(rounds):
        synchronize(device)
        wall, cpu = time.perf_counter(), time.process_time()
        run()
        synchronize(device)
        best_cpu = min(best_cpu, time.process_time() - cpu)
        best_wall = min(best_wall, time.perf_counter() - wall)
    with Counting() as counting, Dispatched() as dispatched:
        run()
    return {
        "cpu_s": best_cpu,
        "wall_s": best_wall,
        "sdpa_calls": counting.attention,
        "aten_ops": dispatched.operations,
    }


def prepared_images(reranker: LocalReranker, images: list[Any]) -> list[_PreparedImage]:
    processor = reranker.loaded.processor.image_processor
    prepared = []
    for image in images:
        features = processor(images=[image], return_tensors="pt")
        prepared.append(_PreparedImage(features["pixel_values"], features["image_grid_thw"]))
    return prepared


def _varlen_calls(engine: Any, before: int) -> int:
    """The varlen kernel calls of the engine's tower since ``before`` (SDPA calls are counted apart)."""
    if engine.vision_attention in (FLASH_VARLEN, TORCH_VARLEN):
        return int(engine.stats.vision_attention_calls - before)
    return 0


def tower_row(reranker: LocalReranker, prepared: list[_PreparedImage], rounds: int) -> dict[str, Any]:
    engine = reranker.engine
    device = engine.loaded.device
    before = engine.stats.vision_attention_calls
    with torch.inference_mode():
        engine._encode_images(prepared[:1])  # warm-up: kernels chosen, layouts of one grid computed
        figures = measure(lambda: engine._encode_images(prepared), device, rounds)
        features = engine._encode_images(prepared)
    forwards = rounds + 2
    figures["attention_calls"] = figures["sdpa_calls"] + _varlen_calls(engine, before) / forwards
    figures["features"] = [part["features"].float() for part in features]
    return figures


def request_row(reranker: LocalReranker, query: Query, documents: list[Document], rounds: int) -> dict[str, Any]:
    engine = reranker.engine
    device = engine.loaded.device
    images, _, keys = engine._prepare_images(query, documents)
    prepared = [images[key] for key in dict.fromkeys(key for key in keys if key is not None)]

    def cold() -> list[float]:
        engine.clear_caches()
        return engine.score(query, documents)

    with torch.inference_mode():
        cold()
        before = engine.stats.vision_attention_calls
        figures = measure(cold, device, rounds)
        figures["attention_calls"] = figures["sdpa_calls"] + _varlen_calls(engine, before) / (rounds + 1)
        tower = measure(lambda: engine._encode_images(prepared), device, rounds)
    figures["vision_share"] = tower["cpu_s"] / figures["cpu_s"]
    figures["scores"] = cold()
    return figures


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shape", default="small", help="tiny or small (random checkpoints written once)")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--dtype", default=None, help="default: float32 on the CPU, bf16 on CUDA")
    parser.add_argument("--images", type=int, default=16, help="distinct images per forward (16)")
    parser.add_argument("--side", type=int, default=448, help="image side in pixels (448: 1,024 patches)")
    parser.add_argument("--rounds", type=int, default=3, help="timed runs per figure, best kept (3)")
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    args = parser.parse_args(argv)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    if args.threads:
        torch.set_num_threads(args.threads)
    bench = _bench_engine()
    folder = bench.checkpoint_folder(args.shape)
    paths = {
        "before: transformers": LocalReranker(
            model=str(folder), device=args.device, dtype=args.dtype, vision_attention=TRANSFORMERS
        ),
        "after: engine": LocalReranker(model=str(folder), device=args.device, dtype=args.dtype),
    }
    after = paths["after: engine"]
    rng = random.Random(0)
    square = [bench.synthetic_image(rng, (args.side, args.side)) for _ in range(args.images)]
    sizes = [(args.side, args.side), (args.side * 3 // 4, args.side // 2), (150, 110), (args.side, 140)]
    mixed = [bench.synthetic_image(rng, sizes[index % len(sizes)]) for index in range(args.images)]
    words = ["white", "linen", "shirt", "summer", "dress", "leather", "bag", "blue", "running", "shoes"]
    documents = [Document(" ".join(rng.choice(words) for _ in range(40)), image=image) for image in square]
    query = Query("a light summer shirt in blue")

    dtype = str(after.loaded.dtype).removeprefix("torch.")
    print(
        f"# Vision tower, {args.shape} shape on {after.loaded.device} ({dtype}),"
        f" torch {torch.__version__}, {torch.get_num_threads()} threads, load average {os.getloadavg()[0]:.1f}; "
        f"engine path: {after.engine.vision_attention}\n"
    )
    header = "| images | path | attention calls | aten ops | CPU s | wall s | max feature Δ |"
    for label, images in (
        (f"{args.images} × {args.side}²", square),
        (f"{args.images} mixed sizes", mixed),
    ):
        rows = {
            name: tower_row(reranker, prepared_images(reranker, images), args.rounds)
            for name, reranker in paths.items()
        }
        print(header)
        print("| --- | --- | --- | --- | --- | --- | --- |")
        reference = rows["before: transformers"]["features"]
        for name, row in rows.items():
            difference = max(float((a - b).abs().max()) for a, b in zip(row["features"], reference, strict=True))
            print(
                f"| {label} | {name} | {row['attention_calls']:,.0f} | {row['aten_ops']:,} | {row['cpu_s']:.3f} | "
                f"{row['wall_s']:.3f} | {difference:.1e} |"
            )
        old, new = rows["before: transformers"], rows["after: engine"]
        print(
            f"\n{label}: attention calls {old['attention_calls'] / new['attention_calls']:.0f}× fewer, aten ops "
            f"{old['aten_ops'] / new['aten_ops']:.1f}× fewer, CPU time {old['cpu_s'] / new['cpu_s']:.2f}× less\n"
        )
    print("| request | path | attention calls | aten ops | CPU s | vision share |")
    print("| --- | --- | --- | --- | --- | --- |")
    results = {name: request_row(reranker, query, documents, args.rounds) for name, reranker in paths.items()}
    for name, row in results.items():
        print(
            f"| {args.images} image+text candidates | {name} | {row['attention_calls']:,.0f} | {row['aten_ops']:,} | "
            f"{row['cpu_s']:.3f} | {100 * row['vision_share']:.0f} % |"
        )
    old, new = results["before: transformers"], results["after: engine"]
    difference = max(abs(a - b) for a, b in zip(old["scores"], new["scores"], strict=True))
    print(
        f"\nrequest: CPU time {old['cpu_s'] / new['cpu_s']:.2f}× less, "
        f"aten ops {old['aten_ops'] / new['aten_ops']:.1f}× fewer; max score Δ {difference:.1e}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
