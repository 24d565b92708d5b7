"""Load test for ``lychee-rerank serve``: bounded concurrent clients on loopback for a fixed time.

Prints requests/s, documents/s, P50/P95/P99 latency, and counts of errors and 429s. It starts the server
itself in a subprocess (``--model tiny``, ``small`` or a checkpoint folder) or hits ``--url``.

Examples:
    python benchmarks/load_service.py --model tiny --duration 20 --concurrency 8
    python benchmarks/load_service.py --model small --duration 30 --documents 8
    python benchmarks/load_service.py --url http://gpu-box:8000 --api-key KEY
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import io
import json
import os
import random
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _service import served

WORDS = (
    "white",
    "linen",
    "shirt",
    "red",
    "summer",
    "dress",
    "running",
    "shoes",
    "leather",
    "handbag",
    "wireless",
    "headphones",
    "stainless",
    "steel",
    "figure",
    "accuracy",
    "training",
    "steps",
    "table",
    "mean",
    "deviation",
    "revenue",
    "quarter",
    "scratched",
    "bearing",
    "crack",
    "corrosion",
)


@dataclass
class LoadResult:
    """What one run measured."""

    duration_s: float
    requests: int
    documents: int
    errors: int
    throttled: int
    latencies_ms: list[float] = field(default_factory=list, repr=False)

    def summary(self) -> dict[str, Any]:
        """Rates and latency percentiles."""
        ordered = sorted(self.latencies_ms)

        def percentile(p: float) -> float:
            if not ordered:
                return float("nan")
            return ordered[min(len(ordered) - 1, round(p / 100 * (len(ordered) - 1)))]

        return {
            "duration_s": round(self.duration_s, 2),
            "requests": self.requests,
            "requests_per_s": round(self.requests / self.duration_s, 2),
            "documents_per_s": round(self.documents / self.duration_s, 2),
            "p50_ms": round(percentile(50), 1),
            "p95_ms": round(percentile(95), 1),
            "p99_ms": round(percentile(99), 1),
            "errors": self.errors,
            "http_429": self.throttled,
        }


def _image_data_uri(seed: int) -> str:
    from PIL import Image

    image = Image.new("RGB", (96, 72), ((seed * 53) % 256, (seed * 97) % 256, (seed * 31) % 256))
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode()


def make_body(rng: random.Random, documents: int, words: int, image_fraction: float, queries: int) -> dict[str, Any]:
    """A Cohere-shaped request: one of ``queries`` queries, ``documents`` documents, some with images."""
    docs: list[Any] = []
    for index in range(documents):
        text = " ".join(rng.choice(WORDS) for _ in range(words))
        docs.append({"text": text, "image": _image_data_uri(index % 4)} if rng.random() < image_fraction else text)
    query = " ".join(WORDS[(rng.randrange(queries) * 3 + k) % len(WORDS)] for k in range(3))
    return {"query": query, "documents": docs}


async def run_load(
    url: str,
    *,
    duration_s: float,
    concurrency: int,
    documents: int,
    words: int,
    image_fraction: float,
    queries: int,
    api_key: str | None = None,
    seed: int = 0,
    warmup: int = 2,
) -> LoadResult:
    """``concurrency`` clients post back to back for ``duration_s`` seconds, after ``warmup`` untimed requests."""
    headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
    rng = random.Random(seed)
    bodies = [json.dumps(make_body(rng, documents, words, image_fraction, queries)).encode() for _ in range(64)]
    result = LoadResult(duration_s=duration_s, requests=0, documents=0, errors=0, throttled=0)
    async with httpx.AsyncClient(base_url=url, headers=headers, timeout=300) as http:
        for body in bodies[:warmup]:  # first calls pay for lazy initialisation; keep them out of the figures
            await http.post("/v1/rerank", content=body, headers={"Content-Type": "application/json"})
    deadline = time.monotonic() + duration_s
    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)

    async def client(number: int, http: httpx.AsyncClient) -> None:
        turn = number
        while time.monotonic() < deadline:
            body = bodies[turn % len(bodies)]
            turn += concurrency
            started = time.perf_counter()
            try:
                answer = await http.post("/v1/rerank", content=body, headers={"Content-Type": "application/json"})
            except httpx.HTTPError:
                result.errors += 1
                continue
            elapsed = (time.perf_counter() - started) * 1000
            if answer.status_code == 429:
                result.throttled += 1
                await asyncio.sleep(float(answer.headers.get("retry-after", "1") or 1) / 10)
            elif answer.status_code != 200:
                result.errors += 1
            else:
                result.requests += 1
                result.documents += documents
                result.latencies_ms.append(elapsed)

    started = time.monotonic()
    async with httpx.AsyncClient(base_url=url, headers=headers, timeout=300, limits=limits) as http:
        await asyncio.gather(*(client(number, http) for number in range(concurrency)))
    result.duration_s = time.monotonic() - started
    return result


def _checkpoint(model: str) -> str:
    if model != "small":
        return model
    from lychee_rerank.core.testing.checkpoint import write_tiny_checkpoint

    folder = Path(os.environ.get("LYCHEE_CACHE_DIR") or Path(tempfile.gettempdir()) / "lychee-rerank") / "small"
    if not (folder / "config.json").exists():
        print(f"writing the small checkpoint to {folder} ...", file=sys.stderr)
        write_tiny_checkpoint(folder, shape="small", overwrite=True)
    return str(folder)


@contextmanager
def started_server(model: str, extra: list[str]) -> Iterator[str]:
    """``lychee-rerank serve`` on ``model`` (``small`` is written first) on a free port; yields its URL."""
    with served(_checkpoint(model), extra) as (url, _):
        yield url


def main(argv: list[str] | None = None) -> int:
    """Runs the load test and prints its figures."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    target = parser.add_mutually_exclusive_group()
    target.add_argument("--url", help="an already running service")
    target.add_argument("--model", default="tiny", help="tiny, small or a checkpoint folder (server started here)")
    parser.add_argument("--duration", type=float, default=20.0, help="seconds of load")
    parser.add_argument("--concurrency", type=int, default=8, help="concurrent clients")
    parser.add_argument("--documents", type=int, default=16, help="documents per request")
    parser.add_argument("--words", type=int, default=24, help="words per document")
    parser.add_argument("--image-fraction", type=float, default=0.25, help="share of documents with an image")
    parser.add_argument("--queries", type=int, default=4, help="distinct queries (equal ones can share a batch)")
    parser.add_argument("--warmup", type=int, default=2, help="untimed requests sent first")
    parser.add_argument("--api-key", default=os.environ.get("LYCHEE_API_KEY"))
    parser.add_argument("--server-arg", action="append", default=[], help="extra flag for serve (repeat)")
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    args = parser.parse_args(argv)
    load = dict(
        duration_s=args.duration,
        concurrency=args.concurrency,
        documents=args.documents,
        words=args.words,
        image_fraction=args.image_fraction,
        queries=args.queries,
        api_key=args.api_key,
        warmup=args.warmup,
    )
    if args.url:
        result = asyncio.run(run_load(args.url, **load))
        target_name = args.url
    else:
        with started_server(args.model, args.server_arg) as url:
            result = asyncio.run(run_load(url, **load))
        target_name = f"--model {args.model}"
    summary = {"target": target_name, **{k: v for k, v in load.items() if k != "api_key"}, **result.summary()}
    if args.json:
        print(json.dumps(summary))
    else:
        for key, value in summary.items():
            print(f"{key:>16}: {value}")
    return 0 if result.requests else 1


if __name__ == "__main__":
    sys.exit(main())
