"""The Kubernetes manifests: rendered by deploy/kubernetes/render.py, validated offline against schemas.

The plain service's objects go through the Kubernetes OpenAPI schemas that kubernetes-validate ships
(strict: an unknown field fails), for the oldest and newest versions tested; the KubeRay RayService through
deploy/kubernetes/rayservice.schema.json, its pod templates through Kubernetes' PodTemplate schema, and
its embedded Serve config through Ray Serve's own config schema.
"""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest
import yaml

kubernetes_validate = pytest.importorskip(
    "kubernetes_validate", reason="the manifest tests need kubernetes-validate: pip install 'lychee-rerank[dev]'"
)
jsonschema = pytest.importorskip("jsonschema", reason="the RayService test needs jsonschema")

DEPLOY = Path(__file__).resolve().parents[1] / "deploy" / "kubernetes"
VERSIONS = ("1.29.0", "1.37.0")
CHANGED = {"image": "registry.example/lychee:1.2", "model": "/models/lychee-rerank-mm", "replicas": 3, "gpus": 2}


def _render_module() -> ModuleType:
    spec = importlib.util.spec_from_file_location("lychee_k8s_render", DEPLOY / "render.py")
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses resolve annotations through sys.modules
    spec.loader.exec_module(module)
    return module


render = _render_module()


def _documents(text: str) -> dict[str, dict[str, Any]]:
    return {document["kind"]: document for document in yaml.safe_load_all(text)}


def _container(documents: dict[str, dict[str, Any]]) -> dict[str, Any]:
    container: dict[str, Any] = documents["Deployment"]["spec"]["template"]["spec"]["containers"][0]
    return container


@pytest.mark.parametrize("version", VERSIONS)
@pytest.mark.parametrize("values", [{}, CHANGED, {"gpus": 0, "replicas": 1, "min_replicas": 1}], ids=str)
def test_service_manifests_are_valid_kubernetes_objects(version: str, values: dict[str, Any]) -> None:
    documents = _documents(render.render(render.Values(**values)))
    assert set(documents) == {"Deployment", "Service", "PodDisruptionBudget", "HorizontalPodAutoscaler"}
    for document in documents.values():
        kubernetes_validate.validate(document, version, strict=True)


def test_the_values_users_change_land_where_they_belong() -> None:
    documents = _documents(render.render(render.Values(**CHANGED)))
    container = _container(documents)
    env = {item["name"]: item for item in container["env"]}
    assert container["image"] == CHANGED["image"]
    assert env["LYCHEE_MODEL"]["value"] == CHANGED["model"]
    assert documents["Deployment"]["spec"]["replicas"] == 3
    assert container["resources"]["limits"]["nvidia.com/gpu"] == 2
    # The key comes from a Secret, never from the manifest.
    assert env["LYCHEE_API_KEY"]["valueFrom"]["secretKeyRef"] == {"name": "lychee-rerank", "key": "api-key"}
    assert "value" not in env["LYCHEE_API_KEY"]


def test_probes_hpa_and_disruption_budget() -> None:
    documents = _documents(render.render(render.Values()))
    container = _container(documents)
    for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
        assert container[probe]["httpGet"] == {"path": "/health", "port": "http"}
    hpa = documents["HorizontalPodAutoscaler"]["spec"]
    assert hpa["scaleTargetRef"]["name"] == documents["Deployment"]["metadata"]["name"]
    assert hpa["metrics"][0]["pods"]["metric"]["name"] == "lychee_queue_depth"
    selector = documents["Deployment"]["spec"]["selector"]["matchLabels"]
    assert documents["PodDisruptionBudget"]["spec"]["selector"]["matchLabels"] == selector
    assert documents["Service"]["spec"]["selector"] == selector
    assert documents["Deployment"]["spec"]["template"]["metadata"]["labels"] == selector


def test_a_cpu_deployment_asks_for_no_gpu() -> None:
    documents = _documents(render.render(render.Values(gpus=0)))
    container = _container(documents)
    assert "nvidia.com/gpu" not in container["resources"]["limits"]
    assert {"name": "LYCHEE_DEVICE", "value": "cpu"} in container["env"]
    assert "tolerations" not in documents["Deployment"]["spec"]["template"]["spec"]


@pytest.mark.parametrize("values", [{}, {**CHANGED, "workers": 3, "max_workers": 6}], ids=str)
def test_rayservice_matches_kuberays_structure_and_holds_a_valid_serve_config(values: dict[str, Any]) -> None:
    manifest = yaml.safe_load(render.render(render.Values(**values), ray=True))
    schema = json.loads((DEPLOY / "rayservice.schema.json").read_text())
    jsonschema.validate(manifest, schema)
    cluster = manifest["spec"]["rayClusterConfig"]
    templates = [cluster["headGroupSpec"]["template"]] + [group["template"] for group in cluster["workerGroupSpecs"]]
    for template in templates:
        pod_template = {"apiVersion": "v1", "kind": "PodTemplate", "metadata": {"name": "t"}, "template": template}
        kubernetes_validate.validate(pod_template, VERSIONS[-1], strict=True)
    worker = cluster["workerGroupSpecs"][0]
    assert worker["replicas"] == values.get("workers", 2)
    assert worker["template"]["spec"]["containers"][0]["resources"]["limits"]["nvidia.com/gpu"] == values.get("gpus", 1)
    config = yaml.safe_load(manifest["spec"]["serveConfigV2"])
    application = config["applications"][0]
    assert application["args"]["model"] == values.get("model", "vec-ai/lychee-rerank-mm")
    deployments = {deployment["name"]: deployment for deployment in application["deployments"]}
    assert deployments["LycheeRerank"]["ray_actor_options"]["num_gpus"] == 1
    assert "num_gpus" not in deployments["LycheeRerankIngress"]["ray_actor_options"]  # no model, no GPU
    try:
        from ray.serve.schema import ServeDeploySchema
    except ImportError:
        return  # the structure above is checked; Ray's own schema needs the [ray] extra
    ServeDeploySchema.model_validate(config)


def test_a_rayservice_missing_its_head_is_refused_by_the_schema() -> None:
    manifest = yaml.safe_load(render.render(render.Values(), ray=True))
    del manifest["spec"]["rayClusterConfig"]["headGroupSpec"]
    schema = json.loads((DEPLOY / "rayservice.schema.json").read_text())
    with pytest.raises(jsonschema.ValidationError, match="headGroupSpec"):
        jsonschema.validate(manifest, schema)


def test_a_manifest_with_a_misspelt_field_is_refused() -> None:
    deployment = _documents(render.render(render.Values()))["Deployment"]
    deployment["spec"]["replica"] = 2
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(deployment, VERSIONS[-1], strict=True)


def test_shipped_manifests_are_the_rendered_defaults() -> None:
    assert (DEPLOY / "lychee-rerank.yaml").read_text() == render.render(render.Values())
    assert (DEPLOY / "rayservice.yaml").read_text() == render.render(render.Values(), ray=True)


def test_bad_values_are_refused_with_the_flag_named() -> None:
    with pytest.raises(ValueError, match="--min-replicas"):
        render.Values(min_replicas=5, max_replicas=2)
