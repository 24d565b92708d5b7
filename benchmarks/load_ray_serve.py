"""Ray Serve against the plain service: throughput of 1 and 2 CPU replicas, and the latency Ray adds.

Starts, on the same checkpoint and side by side, ``lychee-rerank serve`` (the plain service) and
``lychee-rerank serve --ray --replicas 1`` and ``--replicas 2`` (each its own local Ray), all with
``--torch-threads 1`` per model. Then, in ``--rounds`` rounds, runs ``load_service.py``'s load against each
in turn: one client for latency, ``--concurrency`` clients for throughput. Taking turns, round after round,
spreads a busy machine's noise over the three alike; the medians over rounds are reported. Prints a
Markdown table and the two ratios measured in this run: throughput of 2 replicas over 1, and the median
latency of the Ray path (1 replica) over the plain service's.

    .venv/bin/python benchmarks/load_ray_serve.py --model tiny --duration 10 --rounds 3
    .venv/bin/python benchmarks/load_ray_serve.py --model small --documents 4 --duration 15 --rounds 3
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _service import free_port
from load_service import _checkpoint, run_load, started_server


@contextmanager
def started_ray_service(model: str, replicas: int, extra: list[str]) -> Iterator[str]:
    """``lychee-rerank serve --ray --replicas N`` in a subprocess; yields its URL once every replica answers."""
    port = free_port()
    command = [
        sys.executable, "-m", "lychee_rerank.core.cli", "serve", "--ray", "--replicas", str(replicas),
        "--model", model, "--port", str(port), "--no-ui", "--log-level", "warning", "--ray-address", "local", *extra,
    ]  # fmt: skip
    environment = {**os.environ, "RAY_USAGE_STATS_ENABLED": "0"}
    process = subprocess.Popen(command, env=environment)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 600
        seen: set[str] = set()
        body = {"query": "warm up", "documents": ["a", "b"]}
        while len(seen) < replicas:
            if process.poll() is not None:
                raise RuntimeError(f"serve --ray exited with status {process.returncode}")
            if time.monotonic() > deadline:
                raise RuntimeError(f"only {len(seen)} of {replicas} replicas answered in 600 s")
            try:
                answer = httpx.post(f"{url}/v1/rerank", json=body, timeout=30)
                if answer.status_code == 200:
                    seen.add(answer.headers["x-lychee-replica"])
                    continue
            except httpx.HTTPError:
                pass
            time.sleep(0.5)
        yield url
    finally:
        process.send_signal(signal.SIGINT)  # serve --ray shuts Serve and its local Ray down on Ctrl-C
        try:
            process.wait(timeout=60)
        except subprocess.TimeoutExpired:
            process.kill()


def _measure(url: str, load: dict[str, Any], concurrency: int) -> dict[str, Any]:
    return asyncio.run(run_load(url, **{**load, "concurrency": concurrency})).summary()


def _median(values: list[float]) -> float:
    ordered = sorted(values)
    middle = len(ordered) // 2
    return ordered[middle] if len(ordered) % 2 else (ordered[middle - 1] + ordered[middle]) / 2


def main(argv: list[str] | None = None) -> int:
    """Starts the three targets, measures them in turns, and prints their figures."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="tiny", help="tiny, small or a checkpoint folder")
    parser.add_argument("--duration", type=float, default=10.0, help="seconds of load per measurement")
    parser.add_argument("--rounds", type=int, default=3, help="rounds of turns over the three targets")
    parser.add_argument("--concurrency", type=int, default=8, help="clients for the throughput measurement")
    parser.add_argument("--documents", type=int, default=8, help="documents per request")
    parser.add_argument("--words", type=int, default=24, help="words per document")
    parser.add_argument("--image-fraction", type=float, default=0.0, help="share of documents with an image")
    parser.add_argument("--json", dest="json_path", help="also write every measurement here")
    args = parser.parse_args(argv)
    model = _checkpoint(args.model)
    flags = ["--torch-threads", "1", "--device", "cpu"]
    load = dict(
        duration_s=args.duration, documents=args.documents, words=args.words,
        image_fraction=args.image_fraction, queries=4, warmup=4,
    )  # fmt: skip
    names = ("plain", "ray x1", "ray x2")
    runs: dict[str, list[dict[str, Any]]] = {name: [] for name in names}
    with (
        started_server(model, flags) as plain,
        started_ray_service(model, 1, flags) as one,
        started_ray_service(model, 2, flags) as two,
    ):
        urls = dict(zip(names, (plain, one, two), strict=True))
        for round_number in range(args.rounds):
            for name in names:
                latency = _measure(urls[name], load, 1)
                throughput = _measure(urls[name], load, args.concurrency)
                runs[name].append({"latency": latency, "throughput": throughput})
                print(
                    f"round {round_number + 1} {name}: p50 {latency['p50_ms']} ms, "
                    f"{throughput['requests_per_s']} requests/s",
                    file=sys.stderr,
                )
    rows = {
        name: {
            "p50_ms": _median([run["latency"]["p50_ms"] for run in runs[name]]),
            "p95_ms": _median([run["latency"]["p95_ms"] for run in runs[name]]),
            "requests_per_s": _median([run["throughput"]["requests_per_s"] for run in runs[name]]),
            "p50_ms_loaded": _median([run["throughput"]["p50_ms"] for run in runs[name]]),
            "failed": sum(run[kind]["errors"] for run in runs[name] for kind in ("latency", "throughput")),
            "http_429": sum(run["throughput"]["http_429"] for run in runs[name]),
        }
        for name in names
    }
    print(
        f"\nmodel {args.model}, {args.documents} documents of {args.words} words per request, "
        f"{args.rounds} rounds of {args.duration:.0f} s per measurement, medians over rounds\n"
    )
    print(f"| target | p50 ms, 1 client | p95 ms, 1 client | requests/s, {args.concurrency} clients | errors | 429 |")
    print("|---|---|---|---|---|---|")
    for name, row in rows.items():
        print(
            f"| {name} | {row['p50_ms']:.1f} | {row['p95_ms']:.1f} | {row['requests_per_s']:.2f} | "
            f"{row['failed']} | {row['http_429']} |"
        )
    scaling = rows["ray x2"]["requests_per_s"] / rows["ray x1"]["requests_per_s"]
    added_ms = rows["ray x1"]["p50_ms"] - rows["plain"]["p50_ms"]
    ratio = rows["ray x1"]["p50_ms"] / rows["plain"]["p50_ms"]
    print(f"\nthroughput, 2 replicas / 1 replica: {scaling:.2f}x")
    print(f"median latency, Ray (1 replica) / plain: {ratio:.2f}x ({added_ms:+.1f} ms)")
    if args.json_path:
        Path(args.json_path).write_text(json.dumps({"model": args.model, "rows": rows, "runs": runs}, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
