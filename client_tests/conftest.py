"""The light client against a real service: ``lychee-rerank serve --model tiny`` on loopback.

These tests run in a venv without torch (``.ci/run`` builds it with the client's extras only). The service
needs torch, so it runs under another interpreter: ``$LYCHEE_SERVE_PYTHON``, a Python with the ``[server]``
extra (``.ci/run`` passes the main venv's). The session ends by checking that nothing loaded torch here.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from lychee_rerank.core import RemoteReranker

SERVE_PYTHON_ENV = "LYCHEE_SERVE_PYTHON"
API_KEY = "client-tests-key"
HEAVY = ("torch", "torchvision", "transformers")
STARTUP_LIMIT_S = 300.0  # a give-up bound for a slow shared CI machine, not a measurement


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


def _wait_until_healthy(process: subprocess.Popen[bytes], url: str, log: Path) -> None:
    deadline = time.monotonic() + STARTUP_LIMIT_S
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"lychee-rerank serve exited with {process.returncode}:\n{log.read_text()[-4000:]}")
        try:
            if httpx.get(f"{url}/health", timeout=2.0).status_code == 200:
                return
        except httpx.TransportError:
            pass
        time.sleep(0.5)
    raise RuntimeError(f"lychee-rerank serve was not healthy after {STARTUP_LIMIT_S:.0f} s:\n{log.read_text()[-4000:]}")


@pytest.fixture(scope="session")
def service_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """The base URL of a tiny-model service started for this session; stopped at its end."""
    python = os.environ.get(SERVE_PYTHON_ENV)
    if not python:
        pytest.fail(f"set {SERVE_PYTHON_ENV} to a Python with lychee-rerank[server], e.g. .venv/bin/python")
    folder = tmp_path_factory.mktemp("serve")
    port = _free_port()
    url = f"http://127.0.0.1:{port}"
    log = folder / "serve.log"
    environment = {
        **os.environ,
        "LYCHEE_API_KEY": API_KEY,
        "LYCHEE_CACHE_DIR": str(folder / "cache"),  # the tiny checkpoint is written here, not in ~/.cache
    }
    command = [python, "-m", "lychee_rerank.core.cli", "serve", "--model", "tiny", "--device", "cpu"]
    command += ["--host", "127.0.0.1", "--port", str(port)]
    with log.open("wb") as output:
        process = subprocess.Popen(command, stdout=output, stderr=subprocess.STDOUT, env=environment)
    try:
        _wait_until_healthy(process, url, log)
        yield url
    finally:
        process.terminate()
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


@pytest.fixture(scope="session", autouse=True)
def _service_api_key() -> Iterator[None]:
    """Adapters given a bare URL read the key from ``$LYCHEE_API_KEY``, as a user's process would."""
    previous = os.environ.get("LYCHEE_API_KEY")
    os.environ["LYCHEE_API_KEY"] = API_KEY
    yield
    if previous is None:
        del os.environ["LYCHEE_API_KEY"]
    else:
        os.environ["LYCHEE_API_KEY"] = previous


@pytest.fixture(scope="session", autouse=True)
def _nothing_loads_torch() -> Iterator[None]:
    """After every test of the session: the client, the adapters and their frameworks loaded no torch."""
    yield
    loaded = sorted(name for name in sys.modules if name.split(".")[0] in HEAVY)
    assert loaded == [], f"the light client imported {loaded[:5]}"


@pytest.fixture
def remote(service_url: str) -> Iterator[RemoteReranker]:
    reranker = RemoteReranker(service_url, api_key=API_KEY)
    yield reranker
    reranker.close()
