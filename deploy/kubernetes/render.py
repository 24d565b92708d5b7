"""Renders the Kubernetes manifests of lychee-rerank: the plain service, or a KubeRay ``RayService``.

Plain manifests, no Helm: the objects are built here as data and written as YAML, so quoting is never
wrong and the tests validate exactly what ``kubectl apply`` gets. The values users change most are flags;
anything else, edit the output (or patch it with kustomize).

    python deploy/kubernetes/render.py > lychee-rerank.yaml                 # the shipped defaults
    python deploy/kubernetes/render.py --image registry/lychee:1 --gpus 1 --replicas 3 --max-replicas 8
    python deploy/kubernetes/render.py --ray --workers 2 > rayservice.yaml   # Ray Serve on KubeRay

The plain service is a Deployment (GPU limits, probes on /health), a Service, a PodDisruptionBudget and a
HorizontalPodAutoscaler on ``lychee_queue_depth`` (the service's Prometheus gauge of waiting requests; it
reaches the HPA through the custom metrics API, which prometheus-adapter serves). The API key comes from
the Secret named by ``--api-key-secret`` (key ``api-key``): create it first.
"""

from __future__ import annotations

import argparse
import sys
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

import yaml

HERE = Path(__file__).resolve().parent
SERVE_CONFIG = HERE.parent / "ray" / "serve_config.yaml"
PORT = 8000


@dataclass(frozen=True)
class Values:
    """What the manifests are made of. Each field is a flag of this script."""

    name: str = "lychee-rerank"
    namespace: str | None = None
    image: str = "lychee-rerank:latest"
    ray_image: str = "lychee-rerank-ray:latest"
    model: str = "vec-ai/lychee-rerank-mm"
    replicas: int = 2
    min_replicas: int = 2
    max_replicas: int = 8
    target_queue_depth: int = 4
    gpus: int = 1
    cpu: str = "4"
    memory: str = "32Gi"
    api_key_secret: str = "lychee-rerank"
    model_cache_claim: str | None = None
    workers: int = 2
    max_workers: int = 4
    ray_version: str = "2.60.0"

    def __post_init__(self) -> None:
        if self.replicas < 1 or self.workers < 1 or self.gpus < 0:
            raise ValueError("--replicas and --workers must be at least 1 and --gpus at least 0")
        if not 1 <= self.min_replicas <= self.max_replicas:
            raise ValueError(
                f"need 1 <= --min-replicas <= --max-replicas, got {self.min_replicas} and {self.max_replicas}"
            )
        if self.max_workers < self.workers:
            raise ValueError(f"--max-workers ({self.max_workers}) is below --workers ({self.workers})")


def _metadata(values: Values, name: str | None = None) -> dict[str, Any]:
    metadata: dict[str, Any] = {"name": name or values.name, "labels": _labels(values)}
    if values.namespace:
        metadata["namespace"] = values.namespace
    return metadata


def _labels(values: Values) -> dict[str, str]:
    return {"app.kubernetes.io/name": "lychee-rerank", "app.kubernetes.io/instance": values.name}


def _resources(values: Values) -> dict[str, Any]:
    requests: dict[str, Any] = {"cpu": values.cpu, "memory": values.memory}
    limits: dict[str, Any] = {"memory": values.memory}
    if values.gpus:
        # Extended resources are requested through limits; the request defaults to the limit.
        limits["nvidia.com/gpu"] = values.gpus
    return {"requests": requests, "limits": limits}


def _api_key_env(values: Values) -> dict[str, Any]:
    secret = {"name": values.api_key_secret, "key": "api-key"}
    return {"name": "LYCHEE_API_KEY", "valueFrom": {"secretKeyRef": secret}}


def _gpu_scheduling(values: Values) -> dict[str, Any]:
    if not values.gpus:
        return {}
    # GPU nodes are commonly tainted so that only pods asking for GPUs land there.
    return {"tolerations": [{"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}]}


def _model_volume(values: Values) -> dict[str, Any]:
    if values.model_cache_claim:
        return {"name": "models", "persistentVolumeClaim": {"claimName": values.model_cache_claim}}
    return {"name": "models", "emptyDir": {"sizeLimit": "40Gi"}}


def _probe(path: str, period_s: int, failures: int) -> dict[str, Any]:
    return {"httpGet": {"path": path, "port": "http"}, "periodSeconds": period_s, "failureThreshold": failures}


def service_manifests(values: Values) -> list[dict[str, Any]]:
    """Deployment, Service, PodDisruptionBudget and HorizontalPodAutoscaler of the plain service."""
    selector = _labels(values)
    env = [
        {"name": "LYCHEE_MODEL", "value": values.model},
        {"name": "LYCHEE_HOST", "value": "0.0.0.0"},
        {"name": "LYCHEE_PORT", "value": str(PORT)},
        {"name": "HF_HOME", "value": "/models/hf"},
        _api_key_env(values),
    ]
    if not values.gpus:
        env.append({"name": "LYCHEE_DEVICE", "value": "cpu"})
    container = {
        "name": "lychee-rerank",
        "image": values.image,
        # The image's entrypoint is `lychee-rerank serve`; its settings come from the LYCHEE_* variables.
        "ports": [{"name": "http", "containerPort": PORT}],
        "env": env,
        "resources": _resources(values),
        # Downloading and loading the model takes minutes: the startup probe holds the others back until then.
        "startupProbe": _probe("/health", 10, 90),
        "readinessProbe": _probe("/health", 5, 2),
        "livenessProbe": _probe("/health", 20, 3),
        "volumeMounts": [{"name": "models", "mountPath": "/models"}],
    }
    deployment = {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": _metadata(values),
        "spec": {
            "replicas": values.replicas,
            "selector": {"matchLabels": selector},
            "template": {
                "metadata": {
                    "labels": selector,
                    "annotations": {
                        "prometheus.io/scrape": "true",
                        "prometheus.io/port": str(PORT),
                        "prometheus.io/path": "/metrics",
                    },
                },
                "spec": {
                    "containers": [container],
                    "volumes": [_model_volume(values)],
                    # In-flight requests finish before the pod goes: the Service stops routing first.
                    "terminationGracePeriodSeconds": 60,
                    **_gpu_scheduling(values),
                },
            },
        },
    }
    service = {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": _metadata(values),
        "spec": {"selector": selector, "ports": [{"name": "http", "port": PORT, "targetPort": "http"}]},
    }
    budget = {
        "apiVersion": "policy/v1",
        "kind": "PodDisruptionBudget",
        "metadata": _metadata(values),
        "spec": {"maxUnavailable": 1, "selector": {"matchLabels": selector}},
    }
    autoscaler = {
        "apiVersion": "autoscaling/v2",
        "kind": "HorizontalPodAutoscaler",
        "metadata": _metadata(values),
        "spec": {
            "scaleTargetRef": {"apiVersion": "apps/v1", "kind": "Deployment", "name": values.name},
            "minReplicas": values.min_replicas,
            "maxReplicas": values.max_replicas,
            "metrics": [
                {
                    "type": "Pods",
                    "pods": {
                        "metric": {"name": "lychee_queue_depth"},
                        "target": {"type": "AverageValue", "averageValue": str(values.target_queue_depth)},
                    },
                }
            ],
            # A new replica needs minutes to load the model: scale down slowly so that a lull does not undo it.
            "behavior": {"scaleDown": {"stabilizationWindowSeconds": 600}},
        },
    }
    return [deployment, service, budget, autoscaler]


def serve_config(values: Values) -> dict[str, Any]:
    """The Ray Serve config of ``deploy/ray/serve_config.yaml`` with these values' model and GPUs."""
    config: dict[str, Any] = yaml.safe_load(SERVE_CONFIG.read_text())
    application = config["applications"][0]
    application["args"]["model"] = values.model
    if not values.gpus:
        application["args"]["device"] = "cpu"
    for deployment in application["deployments"]:
        if deployment["name"] != "LycheeRerank":
            continue  # the ingress holds no model and takes no GPU
        deployment["ray_actor_options"]["num_gpus"] = min(values.gpus, 1)
        deployment["autoscaling_config"]["max_replicas"] = values.max_workers * max(values.gpus, 1)
    return config


def _ray_container(values: Values, name: str, *, gpus: int) -> dict[str, Any]:
    container: dict[str, Any] = {
        "name": name,
        "image": values.ray_image,
        "env": [{"name": "HF_HOME", "value": "/models/hf"}, _api_key_env(values)],
        "volumeMounts": [{"name": "models", "mountPath": "/models"}],
    }
    if gpus:
        container["resources"] = _resources(values)
    else:
        container["resources"] = {"requests": {"cpu": "2", "memory": "8Gi"}, "limits": {"memory": "8Gi"}}
    return container


def rayservice_manifest(values: Values) -> dict[str, Any]:
    """A KubeRay ``RayService`` (ray.io/v1): a head without GPUs and a GPU worker group, Serve autoscaling on."""
    head_container = _ray_container(values, "ray-head", gpus=0)
    head_container["ports"] = [
        {"name": "gcs", "containerPort": 6379},
        {"name": "dashboard", "containerPort": 8265},
        {"name": "serve", "containerPort": PORT},
    ]
    worker_pod = {
        "spec": {
            "containers": [_ray_container(values, "ray-worker", gpus=values.gpus)],
            "volumes": [_model_volume(values)],
            **_gpu_scheduling(values),
        }
    }
    return {
        "apiVersion": "ray.io/v1",
        "kind": "RayService",
        "metadata": _metadata(values),
        "spec": {
            "serveConfigV2": yaml.safe_dump(serve_config(values), sort_keys=False),
            "rayClusterConfig": {
                "rayVersion": values.ray_version,
                "enableInTreeAutoscaling": True,
                "headGroupSpec": {
                    # No replica on the head: it keeps Ray's control plane and the HTTP proxy.
                    "rayStartParams": {"num-cpus": "0", "dashboard-host": "0.0.0.0"},
                    "template": {"spec": {"containers": [head_container], "volumes": [_model_volume(values)]}},
                },
                "workerGroupSpecs": [
                    {
                        "groupName": "gpu" if values.gpus else "cpu",
                        "replicas": values.workers,
                        "minReplicas": 1,
                        "maxReplicas": values.max_workers,
                        "rayStartParams": {},
                        "template": worker_pod,
                    }
                ],
            },
        },
    }


class _Dumper(yaml.SafeDumper):
    """Writes shared objects (the label selector) out in full, without YAML anchors."""

    def ignore_aliases(self, data: Any) -> bool:
        return True


def _text(dumper: yaml.SafeDumper, data: str) -> yaml.ScalarNode:
    # Multi-line text (the RayService's embedded Serve config) as a readable block.
    return dumper.represent_scalar("tag:yaml.org,2002:str", data, style="|" if "\n" in data else None)


_Dumper.add_representer(str, _text)


def render(values: Values, *, ray: bool = False) -> str:
    """The manifests as one YAML stream."""
    documents = [rayservice_manifest(values)] if ray else service_manifests(values)
    header = "# Rendered by deploy/kubernetes/render.py; edit the values there, not this file.\n"
    return header + yaml.dump_all(documents, Dumper=_Dumper, sort_keys=False)


def main(argv: list[str] | None = None) -> int:
    """Prints the manifests for the values given as flags."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--ray", action="store_true", help="a KubeRay RayService instead of the plain service")
    defaults = Values()
    for field in fields(Values):
        default = getattr(defaults, field.name)
        kind = int if isinstance(default, int) else str
        flag = "--" + field.name.replace("_", "-")
        parser.add_argument(flag, type=kind, default=default, help=f"default {default!r}")
    args = parser.parse_args(argv)
    try:
        values = Values(**{field.name: getattr(args, field.name) for field in fields(Values)})
    except ValueError as error:
        parser.error(str(error))
    sys.stdout.write(render(values, ray=args.ray))
    return 0


if __name__ == "__main__":
    sys.exit(main())
