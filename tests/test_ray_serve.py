"""The service on Ray Serve: a local Ray on loopback, two CPU replicas of the tiny checkpoint.

One Ray session for the whole module (starting Ray and two replicas takes about half a minute on two
cores). Ray's own usage reporting is off: these tests touch nothing beyond loopback.
"""

from __future__ import annotations

import asyncio
import base64
import io
import json
import os
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml
from PIL import Image

os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
ray = pytest.importorskip("ray", reason="the Ray Serve tests need Ray: pip install 'lychee-rerank[ray]'")
serve = pytest.importorskip("ray.serve", reason="the Ray Serve tests need Ray Serve: pip install 'lychee-rerank[ray]'")

from lychee_rerank.core import RemoteReranker  # noqa: E402
from lychee_rerank.core.server.background import running_service  # noqa: E402
from lychee_rerank.core.server.ray_serve import (  # noqa: E402
    APP_NAME,
    DEPLOYMENT_NAME,
    INGRESS_NAME,
    REPLICA_HEADER,
    RayOptions,
    build_app,
    build_application,
    deployment_options,
)
from lychee_rerank.core.server.settings import ServerSettings  # noqa: E402

REPLICAS = 2
CONFIG = Path(__file__).resolve().parents[1] / "deploy" / "ray" / "serve_config.yaml"


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def _data_uri(colour: tuple[int, int, int]) -> str:
    buffer = io.BytesIO()
    Image.new("RGB", (40, 30), colour).save(buffer, format="PNG")
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode()


BODIES: list[dict[str, Any]] = [
    {"query": "red shoes", "documents": ["a red running shoe", "blue sky over the sea", "green tea"]},
    {
        "query": {"text": "a red square", "image": _data_uri((200, 20, 20))},
        "documents": [{"text": "red", "image": _data_uri((210, 30, 30))}, {"image": _data_uri((20, 20, 200))}, "x"],
        "instruction": "image-search",
    },
]


def _running_replicas() -> int:
    status = serve.status().applications[APP_NAME].deployments[DEPLOYMENT_NAME]
    return int(status.replica_states.get("RUNNING", 0))


def _replica_actors() -> dict[str, Any]:
    """Model replica id -> actor name, as Ray names replica actors (``SERVE_REPLICA::app#deployment#id``)."""
    names = [actor["name"] for actor in ray.util.list_named_actors(all_namespaces=True)]
    prefix = f"SERVE_REPLICA::{APP_NAME}#{DEPLOYMENT_NAME}#"
    return {name.rsplit("#", 1)[-1]: name for name in names if name.startswith(prefix)}


@pytest.fixture(scope="module")
def ray_service(tiny_model_dir: Path) -> Iterator[str]:
    """Two CPU replicas behind Ray Serve's proxy on a free loopback port; small queues to see backpressure."""
    ray.init(
        address="local",  # a cluster of its own, even when another one runs on this machine
        num_cpus=2,
        include_dashboard=False,
        log_to_driver=False,
        object_store_memory=80 * 1024 * 1024,
        _node_ip_address="127.0.0.1",
    )
    port = _free_port()
    try:
        serve.start(http_options={"host": "127.0.0.1", "port": port})
        # The UI on: the ingress serves it (a browser session stays in one process), the replicas do not.
        overrides = {"model": str(tiny_model_dir), "device": "cpu", "ui": True, "torch_threads": 1}
        # Half a CPU each in Ray's accounting, so that the Ray Data test below finds room beside them.
        options = RayOptions(replicas=REPLICAS, cpus_per_replica=0.5, max_ongoing_requests=2, max_queued_requests=2)
        serve.run(build_application(overrides, options), name=APP_NAME, route_prefix="/")
        yield f"http://127.0.0.1:{port}"
    finally:
        serve.shutdown()
        ray.shutdown()


def test_same_scores_errors_and_schema_as_the_single_process_service(ray_service: str, tiny_model_dir: Path) -> None:
    with running_service(tiny_model_dir) as single, httpx.Client(timeout=60) as http:
        for body in BODIES:
            on_ray = http.post(f"{ray_service}/v1/rerank", json=body)
            alone = http.post(f"{single.url}/v1/rerank", json=body)
            assert on_ray.status_code == alone.status_code == 200
            ray_scores = {item["index"]: item["relevance_score"] for item in on_ray.json()["results"]}
            alone_scores = {item["index"]: item["relevance_score"] for item in alone.json()["results"]}
            assert ray_scores.keys() == alone_scores.keys()
            for index, value in alone_scores.items():
                assert ray_scores[index] == pytest.approx(value, abs=1e-6)
            assert on_ray.headers[REPLICA_HEADER]
        bad = {"query": "q", "documents": []}
        assert (
            http.post(f"{ray_service}/v1/rerank", json=bad).json()
            == http.post(f"{single.url}/v1/rerank", json=bad).json()
        )
        assert http.get(f"{ray_service}/openapi.json").json() == http.get(f"{single.url}/openapi.json").json()
        assert http.get(f"{ray_service}/health").json()["status"] == "ok"
        assert "lychee_queue_depth" in http.get(f"{ray_service}/metrics").text


def test_the_ui_is_served_by_the_ingress_not_by_a_replica(ray_service: str) -> None:
    page = httpx.get(f"{ray_service}/ui/", timeout=60)
    assert page.status_code == 200
    assert "gradio" in page.text.lower()
    assert REPLICA_HEADER not in page.headers  # not served by a model replica
    config = httpx.get(f"{ray_service}/ui/config", timeout=60).json()
    assert any(component.get("props", {}).get("elem_id") == "pair-score-button" for component in config["components"])


def test_ingress_replicas_above_one_need_the_ui_off(tiny_model_dir: Path) -> None:
    from lychee_rerank.core.errors import LycheeError

    with pytest.raises(LycheeError, match="--ingress-replicas 1, or --no-ui"):
        build_application({"model": str(tiny_model_dir), "ui": True}, RayOptions(ingress_replicas=2))
    assert build_application({"model": str(tiny_model_dir), "ui": False}, RayOptions(ingress_replicas=2))


def test_both_replicas_serve(ray_service: str) -> None:
    seen: set[str] = set()
    with httpx.Client(timeout=60) as http:
        for _ in range(40):
            response = http.post(f"{ray_service}/v1/rerank", json=BODIES[0])
            assert response.status_code == 200
            seen.add(response.headers[REPLICA_HEADER])
            if len(seen) == REPLICAS:
                break
    assert len(seen) == REPLICAS
    assert seen <= set(_replica_actors())


def test_ray_queue_limit_answers_429_with_retry_after(ray_service: str) -> None:
    # 2 replicas x 2 ongoing + 2 queued hold 6 requests; 32 at once must overflow Ray Serve's queue.
    body = {"query": "q", "documents": [f"document number {i} " * 8 for i in range(24)]}

    async def flood() -> list[httpx.Response]:
        limits = httpx.Limits(max_connections=32)
        async with httpx.AsyncClient(timeout=120, limits=limits) as http:
            return list(await asyncio.gather(*(http.post(f"{ray_service}/v1/rerank", json=body) for _ in range(32))))

    responses = asyncio.run(flood())
    statuses = {response.status_code for response in responses}
    assert statuses <= {200, 429}
    throttled = [response for response in responses if response.status_code == 429]
    assert throttled, "no request was refused although Ray's queue was over its limit"
    assert all(int(response.headers["retry-after"]) >= 1 for response in throttled)
    # Refused by Ray's queue or by a replica's own, the body is the service's JSON error.
    assert {response.json()["error"]["type"] for response in throttled} == {"overloaded"}
    assert 200 in statuses


def test_killed_replica_loses_no_request_and_the_service_recovers(ray_service: str) -> None:
    """A replica's actor is killed while four clients keep requests in flight. The requests it held are
    replayed by the ingress on the other replica (or answered 503 + Retry-After, which RemoteReranker
    retries): every request is answered with the right scores through RemoteReranker alone, none with a
    500, and the service is back to two replicas afterwards."""
    expected = RemoteReranker(ray_service, max_retries=8, backoff_s=0.2).score(
        BODIES[0]["query"], BODIES[0]["documents"]
    )
    before = set(_replica_actors())
    answers: list[list[float]] = []
    failures: list[BaseException] = []
    started = threading.Event()

    def client() -> None:
        reranker = RemoteReranker(ray_service, max_retries=8, backoff_s=0.2, timeout=60)
        for _ in range(12):
            try:
                answers.append(reranker.score(BODIES[0]["query"], BODIES[0]["documents"]))
            except BaseException as error:  # every failure is reported below, none is lost
                failures.append(error)
            started.set()
        reranker.close()

    threads = [threading.Thread(target=client) for _ in range(4)]
    for thread in threads:
        thread.start()
    assert started.wait(60)
    victim = sorted(before)[0]
    ray.kill(ray.get_actor(_replica_actors()[victim], namespace="serve"), no_restart=True)
    for thread in threads:
        thread.join(timeout=300)
    assert not failures, failures
    assert len(answers) == 4 * 12
    for scores in answers:
        assert scores == pytest.approx(expected, abs=1e-6)

    deadline = time.monotonic() + 180
    while time.monotonic() < deadline:
        if _running_replicas() == REPLICAS and victim not in _replica_actors() and len(_replica_actors()) == REPLICAS:
            break
        time.sleep(1)
    assert _running_replicas() == REPLICAS
    assert victim not in _replica_actors()


def test_shipped_config_is_a_valid_serve_config_naming_the_builder() -> None:
    from ray.serve.schema import ServeDeploySchema

    config = yaml.safe_load(CONFIG.read_text())
    schema = ServeDeploySchema.model_validate(config)
    application = schema.applications[0]
    assert application.import_path == "lychee_rerank.core.server.ray_serve:build_app"
    assert [deployment.name for deployment in application.deployments] == [DEPLOYMENT_NAME, INGRESS_NAME]
    # The builder accepts the config's args as they are written.
    assert build_app(application.args) is not None


def test_build_app_refuses_an_unknown_argument() -> None:
    with pytest.raises(ValueError, match="unknown argument 'replica'"):
        build_app({"replica": "2"})


def test_deployment_options_one_gpu_per_replica_on_cuda_and_autoscaling() -> None:
    on_gpu = deployment_options(RayOptions(replicas=3), ServerSettings(device="cuda"))
    assert on_gpu["ray_actor_options"]["num_gpus"] == 1
    assert on_gpu["num_replicas"] == 3
    on_cpu = deployment_options(RayOptions(), ServerSettings(device="cpu"), cluster_gpus=lambda: 8.0)
    assert on_cpu["ray_actor_options"]["num_gpus"] == 0
    auto = deployment_options(
        RayOptions(min_replicas=1, max_replicas=4, target_ongoing_requests=8), ServerSettings(), cluster_gpus=lambda: 2
    )
    assert auto["ray_actor_options"]["num_gpus"] == 1
    assert auto["autoscaling_config"] == {"min_replicas": 1, "max_replicas": 4, "target_ongoing_requests": 8}
    assert "num_replicas" not in auto
    # By default a replica takes more requests than its own queue holds: its 429 (JSON, Retry-After) comes first.
    assert on_gpu["max_ongoing_requests"] > ServerSettings().max_queue
    assert deployment_options(RayOptions(), ServerSettings(max_queue=10))["max_ongoing_requests"] == 74
    with pytest.raises(ValueError, match="both --min-replicas and --max-replicas"):
        RayOptions(min_replicas=1)


def test_batch_on_ray_data_matches_the_local_batch(ray_service: str, tiny_model_dir: Path, tmp_path: Path) -> None:
    from lychee_rerank.core.batch import run_batch, run_batch_on_ray

    rows = [
        {"id": f"r{i}", "query": f"query {i}", "documents": [f"doc {i} {j}" for j in range(3 + i % 3)]}
        for i in range(6)
    ]
    rows.append({"id": "bad", "query": "q"})
    source = tmp_path / "in.jsonl"
    source.write_text("".join(json.dumps(row) + "\n" for row in rows))
    from lychee_rerank.core import LocalReranker

    run_batch(source, tmp_path / "local.jsonl", LocalReranker(model=str(tiny_model_dir), device="cpu"), progress=False)
    run_batch_on_ray(
        source, tmp_path / "ray.jsonl", model=str(tiny_model_dir), device="cpu", actors=1, cpus_per_actor=0.5
    )

    def by_id(path: Path) -> dict[str, Any]:
        return {row["id"]: row for row in map(json.loads, path.read_text().splitlines())}

    local, on_ray = by_id(tmp_path / "local.jsonl"), by_id(tmp_path / "ray.jsonl")
    assert local.keys() == on_ray.keys() == {row["id"] for row in rows}
    assert "error" in on_ray["bad"]
    for key, row in local.items():
        if key == "bad":
            continue
        assert [item["index"] for item in on_ray[key]["results"]] == [item["index"] for item in row["results"]]
        for ours, theirs in zip(on_ray[key]["results"], row["results"], strict=True):
            assert ours["score"] == pytest.approx(theirs["score"], abs=1e-6)


def test_serve_ray_refuses_half_an_autoscaling_range_before_loading_anything() -> None:
    from lychee_rerank.core.cli import main

    assert main(["serve", "--ray", "--min-replicas", "1", "--model", "tiny"]) == 2
