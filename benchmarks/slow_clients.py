"""Slow clients against ``lychee-rerank serve``: does a normal request still answer while many sockets stall?

Starts the service (``--model tiny``) in a subprocess under an open-file limit (``prlimit --nofile``,
default 1024), opens ``--sockets`` slow connections from this process (half send their headers a byte at a
time, half send headers announcing a large body and then the body a byte at a time), and meanwhile times
normal ``/v1/rerank`` requests, each on a new connection. Everything is on loopback and stops after
``--duration`` seconds. Prints the normal request's latency before and during the flood (and their ratio),
how the server closed the slow sockets (408, 503, or without an answer), and how much the server logged.

Examples:
    python benchmarks/slow_clients.py
    python benchmarks/slow_clients.py --sockets 1100 --nofile 1024 --duration 30
    python benchmarks/slow_clients.py --python /other/checkout/.venv/bin/python   # another checkout
"""

from __future__ import annotations

import argparse
import asyncio
import json
import resource
import statistics
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path
from typing import Any

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _service import served

BODY = {"query": "white linen shirt", "documents": ["a white linen shirt", "a red summer dress"]}


async def _normal_request(url: str, timeout_s: float) -> float | None:
    """Seconds for one rerank on a fresh connection; None when it failed or timed out."""
    started = time.perf_counter()
    try:
        async with httpx.AsyncClient(timeout=timeout_s) as client:
            answer = await client.post(f"{url}/v1/rerank", json=BODY)
        if answer.status_code != 200:
            return None
    except httpx.HTTPError:
        return None
    return time.perf_counter() - started


async def _slow_socket(port: int, kind: str, stop: asyncio.Event, outcomes: Counter[str], interval_s: float) -> None:
    try:
        reader, writer = await asyncio.wait_for(asyncio.open_connection("127.0.0.1", port), timeout=10)
    except (OSError, asyncio.TimeoutError):
        outcomes["connect failed"] += 1
        return
    outcomes["connected"] += 1
    if kind == "header":
        head, drip = b"POST /v1/rerank HTTP/1.1\r\nHost: localhost\r\n", b"X-Slow: " + b"a" * 100_000
    else:
        head = b"POST /v1/rerank HTTP/1.1\r\nHost: localhost\r\nContent-Type: application/json\r\n"
        head += b"Content-Length: 1000000\r\n\r\n"
        drip = b" " * 1_000_000
    answer = asyncio.ensure_future(reader.read(200))
    try:
        writer.write(head)
        for byte in drip:
            if stop.is_set():
                outcomes[f"{kind}: still open at the end"] += 1
                return
            done, _ = await asyncio.wait({answer}, timeout=interval_s)
            if done:
                data = answer.result() if not answer.exception() else b""
                status = data.split(b" ", 2)[1].decode() if data.startswith(b"HTTP/") else "no answer"
                outcomes[f"{kind}: closed by the server ({status})"] += 1
                return
            writer.write(bytes([byte]))
    except OSError:
        outcomes[f"{kind}: reset by the server"] += 1
    finally:
        answer.cancel()
        writer.close()


async def _flood(args: argparse.Namespace, url: str, port: int) -> dict[str, Any]:
    baseline = [await _normal_request(url, 10) for _ in range(5)]
    stop = asyncio.Event()
    outcomes: Counter[str] = Counter()
    slow = []
    opened_at = time.monotonic()
    for number in range(args.sockets):
        kind = "header" if number % 2 == 0 else "body"
        slow.append(asyncio.ensure_future(_slow_socket(port, kind, stop, outcomes, args.interval)))
        if number % 50 == 49:
            await asyncio.sleep(0.05)  # a steady stream of connections, not one burst the kernel drops
    await asyncio.sleep(1.0)
    opened_s = time.monotonic() - opened_at
    during: list[float | None] = []
    end = opened_at + args.duration
    while time.monotonic() < end:
        during.append(await _normal_request(url, args.request_timeout))
        await asyncio.sleep(0.5)
    stop.set()
    await asyncio.gather(*slow, return_exceptions=True)
    return {"baseline": baseline, "during": during, "outcomes": dict(outcomes), "opened_s": opened_s}


def _summary(latencies: list[float | None]) -> str:
    ok = [value for value in latencies if value is not None]
    if not ok:
        return f"0 of {len(latencies)} answered"
    return (
        f"{len(ok)} of {len(latencies)} answered; median {statistics.median(ok) * 1000:.0f} ms, "
        f"max {max(ok) * 1000:.0f} ms"
    )


def main(argv: list[str] | None = None) -> int:
    """Runs the benchmark; prints a report (and JSON with ``--json``)."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sockets", type=int, default=1100, help="slow connections to open")
    parser.add_argument("--nofile", type=int, default=1024, help="the server's open-file limit")
    parser.add_argument("--duration", type=float, default=30.0, help="seconds of flood, then everything stops")
    parser.add_argument("--interval", type=float, default=1.0, help="seconds between a slow socket's bytes")
    parser.add_argument("--request-timeout", type=float, default=10.0, help="client timeout of a normal request")
    parser.add_argument("--python", default=sys.executable, help="the interpreter that runs the server")
    parser.add_argument("--json", type=Path, help="also write the figures here")
    parser.add_argument("--keep-log", type=Path, help="copy the server's log here")
    args, server_args = parser.parse_known_args(argv)
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    wanted = args.sockets + 256
    if soft < wanted:
        if hard != resource.RLIM_INFINITY and hard < wanted:
            parser.error(f"this process may open only {hard} files; {args.sockets} sockets need about {wanted}")
        resource.setrlimit(resource.RLIMIT_NOFILE, (wanted, hard))
    with tempfile.TemporaryDirectory() as folder:
        log = Path(folder) / "server.log"
        flags = ["--device", "cpu", "--torch-threads", "1", *server_args]
        limit = ["prlimit", f"--nofile={args.nofile}:{args.nofile}"]
        with served("tiny", flags, python=args.python, wrapper=limit, log=log, ready_timeout_s=120) as (url, _):
            figures = asyncio.run(_flood(args, url, int(url.rsplit(":", 1)[1])))
        text = log.read_text(errors="replace")
        if args.keep_log:
            args.keep_log.write_text(text)
    figures["log_bytes"] = len(text.encode())
    figures["log_too_many_open_files"] = text.count("Too many open files")
    ok_base = [value for value in figures["baseline"] if value is not None]
    ok_during = [value for value in figures["during"] if value is not None]
    print(f"server: --model tiny under ulimit -n {args.nofile}; {args.sockets} slow sockets for {args.duration:g} s")
    print(f"normal request before the flood: {_summary(figures['baseline'])}")
    print(f"normal request during the flood: {_summary(figures['during'])}")
    if ok_base and ok_during:
        ratio = max(ok_during) / statistics.median(ok_base)
        print(f"worst during / median before: {ratio:.1f}x")
    for outcome, count in sorted(figures["outcomes"].items()):
        print(f"slow sockets {outcome}: {count}")
    print(f"server log: {figures['log_bytes']} bytes, 'Too many open files' {figures['log_too_many_open_files']} times")
    if args.json:
        args.json.write_text(json.dumps(figures, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
