"""The benchmarks' shared helper: ``lychee-rerank serve`` in a subprocess, ready once ``/health`` answers."""

from __future__ import annotations

import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager

import httpx


def free_port() -> int:
    """A loopback port free at the time of asking."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


@contextmanager
def served(model: str, extra: list[str], *, ready_timeout_s: float = 300) -> Iterator[tuple[str, int]]:
    """``lychee-rerank serve --model MODEL --no-ui EXTRA...`` on a free loopback port; yields its URL and process
    id once ``/health`` answers 200, and stops it afterwards.

    Raises:
        RuntimeError: The server exited, or was not healthy within ``ready_timeout_s``.
    """
    port = free_port()
    command = [
        sys.executable, "-m", "lychee_rerank.core.cli", "serve", "--model", model, "--port", str(port),
        "--no-ui", "--log-level", "warning", *extra,
    ]  # fmt: skip
    process = subprocess.Popen(command)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + ready_timeout_s
        while True:
            if process.poll() is not None:
                raise RuntimeError(f"the server exited with status {process.returncode}")
            try:
                if httpx.get(f"{url}/health", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if time.monotonic() > deadline:
                raise RuntimeError(f"the server did not become healthy in {ready_timeout_s:g} s")
            time.sleep(0.2)
        yield url, process.pid
    finally:
        process.terminate()
        try:
            process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            process.kill()
