"""The service under hostile traffic: slow image hosts, images that are slow to decode, maximal bodies.

Starts ``lychee-rerank serve`` (``--model tiny`` unless told) in a subprocess, so the client's own work
never shares the server's GIL, and prints one figure per scenario, each next to a reference measured in
the same run:

- ``fairness``: one request naming ``--slow-urls`` images on a host that drips a byte every 50 ms, then
  three requests with one fast image URL each (``--request-timeout-s 5``, ``--fetch-timeout-s 10``, as
  in the issue). Reported: each fast request's latency against the same request alone, and the slow
  request's status and latency against the deadline.
- ``decoding``: six requests with one 6000×6000 image each, then a text request. Reported: the text
  request's latency against the same request alone.
- ``event-loop``: four maximal legal bodies (990 documents × 60,000 characters, about 59 MB each) at
  once, ``/health`` polled every 20 ms meanwhile. Reported: ``/health`` P50/P99/max against ``/health``
  on the idle server, the server's RSS before and at its peak, and how the big requests ended.

Examples:
    python benchmarks/hostile_service.py                       # all three, tiny model
    python benchmarks/hostile_service.py --scenario event-loop --window-s 60
"""

from __future__ import annotations

import argparse
import base64
import contextlib
import http.server
import io
import json
import random
import statistics
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _service

WORDS = ("white", "linen", "shirt", "red", "summer", "dress", "chart", "revenue", "figure", "table", "wool")


# -- the server and the image hosts -----------------------------------------------------------------


def served(model: str, extra: list[str]) -> contextlib.AbstractContextManager[tuple[str, int]]:
    """``lychee-rerank serve`` allowed to fetch from loopback (the image hosts below); yields URL and pid."""
    return _service.served(model, ["--allow-private-urls", *extra])


def _png(size: tuple[int, int], colour: tuple[int, int, int]) -> bytes:
    from PIL import Image

    buffer = io.BytesIO()
    Image.new("RGB", size, colour).save(buffer, format="PNG")
    return buffer.getvalue()


@contextmanager
def image_host(drip_for_s: float) -> Iterator[str]:
    """``/fast/...``: a small PNG at once; ``/slow/...``: headers, then a byte every 50 ms for ``drip_for_s``."""
    small = _png((64, 64), (200, 30, 30))
    stop = threading.Event()

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            fast = self.path.startswith("/fast/")
            self.send_response(200)
            self.send_header("Content-Type", "image/png")
            self.send_header("Content-Length", str(len(small)) if fast else "1000000")
            self.end_headers()
            if fast:
                self.wfile.write(small)
                return
            ends = time.monotonic() + drip_for_s
            try:
                while time.monotonic() < ends and not stop.is_set():
                    self.wfile.write(b"\x00")
                    self.wfile.flush()
                    time.sleep(0.05)
            except OSError:
                pass

        def log_message(self, *args: Any) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        stop.set()
        server.shutdown()
        server.server_close()


def _rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def _timed_post(url: str, body: dict[str, Any] | bytes, timeout: float = 600) -> tuple[float, int]:
    started = time.perf_counter()
    try:
        if isinstance(body, bytes):
            headers = {"Content-Type": "application/json"}
            answer = httpx.post(url, content=body, headers=headers, timeout=timeout)
        else:
            answer = httpx.post(url, json=body, timeout=timeout)
        status = answer.status_code
    except httpx.HTTPError:
        status = -1
    return time.perf_counter() - started, status


def _in_threads(jobs: dict[str, Any]) -> dict[str, tuple[float, int]]:
    results: dict[str, tuple[float, int]] = {}
    threads = [threading.Thread(target=lambda n=n, j=j: results.__setitem__(n, j())) for n, j in jobs.items()]
    for thread in threads:
        thread.start()
        time.sleep(0.05)  # in the order given
    for thread in threads:
        thread.join()
    return results


# -- scenarios ------------------------------------------------------------------------------------


def fairness(model: str, slow_urls: int, extra: list[str]) -> dict[str, Any]:
    timeouts = ["--request-timeout-s", "5", "--fetch-timeout-s", "10"]
    with image_host(drip_for_s=60) as host, served(model, [*timeouts, *extra]) as (url, _):
        rerank = f"{url}/v1/rerank"

        def fast(n: int) -> dict[str, Any]:
            return {"query": "q", "documents": [{"text": "t", "image": f"{host}/fast/{n}.png"}]}

        _timed_post(rerank, fast(99))  # warm-up
        alone = statistics.median(_timed_post(rerank, fast(100 + n))[0] for n in range(5))
        slow = {"query": "q", "documents": [{"image": f"{host}/slow/{n}.png"} for n in range(slow_urls)]}
        jobs: dict[str, Any] = {"slow": lambda: _timed_post(rerank, slow)}
        for n in range(3):
            jobs[f"fast{n}"] = lambda n=n: _timed_post(rerank, fast(n))
        results = _in_threads(jobs)
    return {
        "fast_alone_s": round(alone, 3),
        "fast_behind_slow_s": [round(results[f"fast{n}"][0], 3) for n in range(3)],
        "fast_status": [results[f"fast{n}"][1] for n in range(3)],
        "slow_s": round(results["slow"][0], 2),
        "slow_status": results["slow"][1],
        "slow_urls": slow_urls,
        "deadline_s": 5.0,
    }


def decoding(model: str, extra: list[str]) -> dict[str, Any]:
    with served(model, extra) as (url, _):
        rerank = f"{url}/v1/rerank"
        text = {"query": "q", "documents": ["a short text document"]}
        _timed_post(rerank, text)
        alone = statistics.median(_timed_post(rerank, text)[0] for _ in range(5))
        jobs: dict[str, Any] = {}
        for n in range(6):
            data = base64.b64encode(_png((6000, 6000), (40 * n, 200, 30))).decode()
            body = {"query": "q", "documents": [{"image": "data:image/png;base64," + data}]}
            jobs[f"image{n}"] = lambda body=body: _timed_post(rerank, body)
        jobs["text"] = lambda: _timed_post(rerank, text)
        results = _in_threads(jobs)
    images = [results[f"image{n}"] for n in range(6)]
    return {
        "text_alone_s": round(alone, 3),
        "text_behind_images_s": round(results["text"][0], 3),
        "text_status": results["text"][1],
        "images_s": [round(seconds, 2) for seconds, _ in images],
        "images_status": [status for _, status in images],
    }


def event_loop(model: str, window_s: float, documents: int, characters: int, extra: list[str]) -> dict[str, Any]:
    rng = random.Random(0)

    def body(seed: int) -> bytes:
        text = " ".join(rng.choice(WORDS) for _ in range(characters // 4))[:characters]
        return json.dumps({"query": f"query {seed}", "documents": [text] * documents}).encode()

    bodies = [body(seed) for seed in range(4)]
    with served(model, extra) as (url, pid), httpx.Client(timeout=10) as client:
        for _ in range(20):
            client.get(f"{url}/health")
        idle = []
        for _ in range(100):
            started = time.perf_counter()
            client.get(f"{url}/health")
            idle.append(time.perf_counter() - started)
        rss_before = _rss_mb(pid)
        outcomes: dict[int, tuple[float, int]] = {}
        senders = [
            threading.Thread(target=lambda n=n: outcomes.__setitem__(n, _timed_post(f"{url}/v1/rerank", bodies[n])))
            for n in range(4)
        ]
        for sender in senders:
            sender.start()
        latencies: list[float] = []
        failures = 0
        peak = rss_before
        ends = time.monotonic() + window_s
        while time.monotonic() < ends and any(sender.is_alive() for sender in senders):
            started = time.perf_counter()
            try:
                client.get(f"{url}/health")
            except httpx.HTTPError:
                failures += 1
            latencies.append(time.perf_counter() - started)
            peak = max(peak, _rss_mb(pid))
            time.sleep(0.02)
        finished = dict(outcomes)
        # The window is over; the server is stopped, which also ends requests still running.
    latencies.sort()
    return {
        "body_mb": round(len(bodies[0]) / 1e6, 1),
        "health_idle_p99_ms": round(1000 * sorted(idle)[98], 1),
        "health_polls": len(latencies),
        "health_p50_ms": round(1000 * latencies[len(latencies) // 2], 1),
        "health_p99_ms": round(1000 * latencies[max(0, int(len(latencies) * 0.99) - 1)], 1),
        "health_max_ms": round(1000 * latencies[-1], 1),
        "health_failures": failures,
        "rss_before_mb": round(rss_before),
        "rss_peak_mb": round(peak),
        "big_requests_finished_in_window": {n: (round(s, 1), status) for n, (s, status) in finished.items()},
        "window_s": window_s,
    }


def main(argv: list[str] | None = None) -> int:
    """Runs the chosen scenarios and prints their figures as JSON lines."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="tiny", help="tiny, or a checkpoint folder")
    parser.add_argument("--scenario", choices=("all", "fairness", "decoding", "event-loop"), default="all")
    parser.add_argument("--slow-urls", type=int, default=60)
    parser.add_argument("--window-s", type=float, default=120.0, help="how long to watch the four big bodies")
    parser.add_argument("--documents", type=int, default=990)
    parser.add_argument("--characters", type=int, default=60_000)
    parser.add_argument("--serve-args", default="", help="more flags for the server, e.g. '--prepare-threads 2'")
    args = parser.parse_args(argv)
    extra = args.serve_args.split()
    if args.scenario in ("all", "fairness"):
        print(json.dumps({"fairness": fairness(args.model, args.slow_urls, extra)}), flush=True)
    if args.scenario in ("all", "decoding"):
        print(json.dumps({"decoding": decoding(args.model, extra)}), flush=True)
    if args.scenario in ("all", "event-loop"):
        figures = event_loop(args.model, args.window_s, args.documents, args.characters, extra)
        print(json.dumps({"event_loop": figures}), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
