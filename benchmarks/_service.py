"""The benchmarks' shared helper: ``lychee-rerank serve`` in a subprocess, ready once ``/health`` answers."""

from __future__ import annotations

import socket
import subprocess
import sys
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path

import httpx


def free_port() -> int:
    """A loopback port free at the time of asking."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


@contextmanager
def served(
    model: str,
    extra: list[str],
    *,
    python: str = sys.executable,
    wrapper: Sequence[str] = (),
    log: Path | None = None,
    ready_timeout_s: float = 300,
) -> Iterator[tuple[str, int]]:
    """``lychee-rerank serve --model MODEL --no-ui EXTRA...`` on a free loopback port; yields its URL and process
    id once ``/health`` answers 200, and stops it afterwards.

    Args:
        model: What ``--model`` names.
        extra: More flags for ``serve``.
        python: The interpreter (another virtualenv's, to serve another install).
        wrapper: A command the server runs under (``prlimit --nofile=N:N``).
        log: Where the server's output goes; default: this process's.
        ready_timeout_s: How long the server may take to become healthy.

    Raises:
        RuntimeError: The server exited, or was not healthy within ``ready_timeout_s``.
    """
    port = free_port()
    command = [
        *wrapper, python, "-m", "lychee_rerank.core.cli", "serve", "--model", model, "--port", str(port),
        "--no-ui", "--log-level", "warning", *extra,
    ]  # fmt: skip
    output = log.open("wb") if log is not None else None
    process = subprocess.Popen(command, stdout=output, stderr=subprocess.STDOUT if output else None)
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
            process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            process.kill()
        if output is not None:
            output.close()
