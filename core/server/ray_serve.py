"""The service on Ray Serve: the same FastAPI app (:func:`create_app`) as N replicas, one model each.

Two deployments make one Serve application:

- ``LycheeRerank``, the model replicas: each builds the whole app (every route, error body, limit, metric
  and the OpenAPI schema) around its own :class:`~lychee_rerank.core.local.LocalReranker` and answers
  requests handed to it whole (:class:`~lychee_rerank.core.server.forwarding.AppHost`). Its responses
  carry ``x-lychee-replica``, the replica's id.
- ``LycheeRerankIngress``, in front, with no model: Ray Serve's HTTP proxy hands it every request; it checks
  the API key and the body limit, and passes the request to a model replica through a deployment handle
  (:class:`~lychee_rerank.core.server.forwarding.Forwarder`). Ray routes each to the less busy of two
  replicas. When a replica dies while it holds a request, Ray's proxy would answer that request 500; the
  ingress instead replays it on another replica, or answers 503 with ``Retry-After`` when none can take it,
  so no request is lost to a replica's death. It also serves the UI (:mod:`~lychee_rerank.core.server.ingress`):
  a browser session must stay in one process, and Ray routes each request to any replica.

Backpressure has two layers, both answering 429 with ``Retry-After`` and the service's JSON error body:

- inside a replica, the service's own queue (``max_queue``);
- in front of the replicas, Ray Serve's queue of the model deployment (``max_queued_requests``): the
  ingress turns its refusal into the same 429.

Two ways in:

- ``lychee-rerank serve --ray --replicas 2 --model M`` starts (or, with ``--ray-address``, joins) a
  cluster and serves on ``--host``/``--port`` until interrupted;
- ``serve run`` / ``serve deploy`` with ``deploy/ray/serve_config.yaml``, whose ``import_path`` is
  :func:`build_app`: ``args`` are the service's settings and these options by name.

Importing this module is cheap: Ray, FastAPI and torch are imported only when an app is built.
"""

from __future__ import annotations

import argparse
import logging
import signal
import time
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass, fields
from typing import TYPE_CHECKING, Any

from lychee_rerank.core.errors import LycheeError
from lychee_rerank.core.server.settings import ServerSettings, parse_value

if TYPE_CHECKING:
    from lychee_rerank.core.server.forwarding import ReplicaTrouble

logger = logging.getLogger(__name__)

APP_NAME = "lychee-rerank"
"""The Serve application's name (``serve status`` shows it)."""

DEPLOYMENT_NAME = "LycheeRerank"
"""The model deployment's name: a Serve config overrides its options under ``deployments: - name: LycheeRerank``."""

INGRESS_NAME = "LycheeRerankIngress"
"""The ingress deployment's name (no model: it carries requests to the model replicas)."""

REPLICA_HEADER = "x-lychee-replica"
"""The response header naming the replica that answered."""


@dataclass(frozen=True)
class RayOptions:
    """How the service runs on Ray Serve.

    Attributes:
        address: The Ray cluster to join (``auto``, ``ray://head:10001``...); ``local`` always starts a new
            one on this machine; ``None`` joins ``$RAY_ADDRESS``, else the latest cluster started on this
            machine, else starts one (Ray's own rule).
        replicas: Replicas when not autoscaling.
        min_replicas: With ``max_replicas``, autoscale between these bounds instead of a fixed count.
        max_replicas: Upper bound when autoscaling.
        target_ongoing_requests: Requests per replica the autoscaler aims at.
        max_ongoing_requests: Requests one replica holds at once (its scheduler merges them into batches);
            more wait in Ray Serve's queue. ``None``: the service's ``max_queue`` + 64, so that a busy
            replica's own queue answers 429 first, with the service's JSON error body, and Ray's queue
            only holds what arrives while no replica can take it (replicas starting or replaced).
        max_queued_requests: Requests Ray Serve queues in front of the replicas; more are answered 429
            by the ingress. -1: no limit.
        retry_after_s: The ``Retry-After`` of that 429, and of the 503 sent when no replica could answer.
        gpus_per_replica: GPUs each replica holds; ``None``: 1 when the model runs on CUDA (``--device
            cuda``, or no device and the cluster has GPUs), else 0.
        cpus_per_replica: CPUs each replica reserves in Ray's accounting.
        ingress_replicas: Replicas of the ingress (no model, no CPU reserved): more than one only for
            availability, as each carries thousands of requests.
    """

    address: str | None = None
    replicas: int = 1
    min_replicas: int | None = None
    max_replicas: int | None = None
    target_ongoing_requests: float = 16.0
    max_ongoing_requests: int | None = None
    max_queued_requests: int = 256
    retry_after_s: float = 1.0
    gpus_per_replica: float | None = None
    cpus_per_replica: float = 1.0
    ingress_replicas: int = 1

    def __post_init__(self) -> None:
        if self.replicas < 1:
            raise ValueError(f"--replicas must be at least 1, got {self.replicas}")
        if self.ingress_replicas < 1:
            raise ValueError(f"--ingress-replicas must be at least 1, got {self.ingress_replicas}")
        if (self.min_replicas is None) != (self.max_replicas is None):
            raise ValueError("give both --min-replicas and --max-replicas to autoscale, or neither")
        if (
            self.min_replicas is not None
            and self.max_replicas is not None
            and (self.min_replicas < 0 or self.max_replicas < max(self.min_replicas, 1))
        ):
            raise ValueError(
                f"autoscaling needs 0 <= --min-replicas <= --max-replicas and --max-replicas >= 1, "
                f"got {self.min_replicas} and {self.max_replicas}"
            )
        if (
            self.max_ongoing_requests is not None and self.max_ongoing_requests < 1
        ) or self.target_ongoing_requests <= 0:
            raise ValueError("--max-ongoing-requests must be at least 1 and --target-ongoing-requests positive")
        if self.max_queued_requests < -1 or self.max_queued_requests == 0:
            raise ValueError(
                f"--max-queued-requests must be -1 (no limit) or at least 1, got {self.max_queued_requests}"
            )


_IN_FLIGHT_MARGIN = 64
"""Requests a replica holds beyond its queue: those its scheduler is scoring, or parsing before they queue."""

_FLAG_HELP = {
    "address": "Ray cluster to join (auto, ray://head:10001; local: a new one here; default: $RAY_ADDRESS, "
    "else the latest one started here, else a new one)",
    "replicas": "replicas, each holding one model (default 1)",
    "min_replicas": "autoscale: fewest replicas (with --max-replicas)",
    "max_replicas": "autoscale: most replicas (with --min-replicas)",
    "target_ongoing_requests": "autoscale: requests per replica to aim at (default 16)",
    "max_ongoing_requests": "requests one replica holds at once; more wait in Ray's queue (default --max-queue + 64)",
    "max_queued_requests": "requests Ray Serve queues before answering 429; -1: no limit (default 256)",
    "retry_after_s": "Retry-After of that 429 and of the 503 when no replica can answer (default 1)",
    "gpus_per_replica": "GPUs per replica (default: 1 when the model runs on CUDA, else 0)",
    "cpus_per_replica": "CPUs per replica in Ray's accounting (default 1)",
    "ingress_replicas": "replicas of the ingress, which holds no model (default 1)",
}
_FLAGS = {"address": "--ray-address"}


def add_ray_arguments(parser: argparse.ArgumentParser) -> None:
    """Adds ``--ray`` and the Ray Serve options to ``lychee-rerank serve``."""
    group = parser.add_argument_group("Ray Serve", "serve the same API from N replicas on a Ray cluster")
    group.add_argument("--ray", action="store_true", help="serve on Ray Serve (needs the [ray] extra)")
    for field in fields(RayOptions):
        kind = str(field.type)
        parse: Callable[[str], Any] = int if kind.startswith("int") else float if kind.startswith("float") else str
        group.add_argument(
            _FLAGS.get(field.name, "--" + field.name.replace("_", "-")),
            dest="ray_" + field.name,
            metavar=field.name.split("_")[-1].upper(),
            type=parse,
            default=None,
            help=_FLAG_HELP[field.name],
        )


def options_from_args(args: argparse.Namespace) -> RayOptions:
    """The Ray options given on the command line, defaults for the rest.

    Raises:
        LycheeError: An option is out of range, saying which.
    """
    given = {field.name: getattr(args, "ray_" + field.name, None) for field in fields(RayOptions)}
    try:
        return RayOptions(**{name: value for name, value in given.items() if value is not None})
    except ValueError as error:
        raise LycheeError(str(error)) from None


def _wants_gpu(settings: ServerSettings, cluster_gpus: Callable[[], float]) -> bool:
    if settings.device is not None:
        return settings.device.startswith("cuda")
    return cluster_gpus() > 0


def deployment_options(
    options: RayOptions, settings: ServerSettings, *, cluster_gpus: Callable[[], float] = lambda: 0.0
) -> dict[str, Any]:
    """The keyword arguments of ``serve.deployment`` for these options.

    Args:
        options: Replicas, autoscaling, queue limits and resources.
        settings: The service's settings (the device decides the default GPU count).
        cluster_gpus: GPUs in the cluster, asked only when neither ``gpus_per_replica`` nor the device says.

    Example:
        >>> deployment_options(RayOptions(replicas=2), ServerSettings(device="cuda"))["ray_actor_options"]
        {'num_cpus': 1.0, 'num_gpus': 1.0}
    """
    gpus = options.gpus_per_replica
    if gpus is None:
        gpus = 1.0 if _wants_gpu(settings, cluster_gpus) else 0.0
    result: dict[str, Any] = {
        "name": DEPLOYMENT_NAME,
        "ray_actor_options": {"num_cpus": options.cpus_per_replica, "num_gpus": gpus},
        "max_ongoing_requests": options.max_ongoing_requests or settings.max_queue + _IN_FLIGHT_MARGIN,
        "max_queued_requests": options.max_queued_requests,
        # Loading a 7B model takes a while; Ray's default health-check timeout would kill a loading replica.
        "health_check_timeout_s": 120.0,
        "logging_config": _logging_config(settings.log_level),
    }
    if options.min_replicas is not None:
        result["autoscaling_config"] = {
            "min_replicas": options.min_replicas,
            "max_replicas": options.max_replicas,
            "target_ongoing_requests": options.target_ongoing_requests,
        }
    else:
        result["num_replicas"] = options.replicas
    backpressure = _backpressure_config(options.retry_after_s)
    if backpressure is not None:
        result["backpressure_config"] = backpressure
    return result


def ingress_options(options: RayOptions, settings: ServerSettings) -> dict[str, Any]:
    """The keyword arguments of ``serve.deployment`` for the ingress.

    It reserves no CPU (it only carries bytes, and must find room beside replicas that take every core)
    and holds more requests at once than the model replicas and their queue can, so that an overloaded
    service is refused by the model tier's queue, which the ingress answers 429 in the service's body,
    rather than by Ray's proxy in front of the ingress, in Ray's text.

    Example:
        >>> ingress_options(RayOptions(replicas=2, max_queued_requests=10), ServerSettings(max_queue=6))[
        ...     "max_ongoing_requests"]
        420
    """
    per_replica = options.max_ongoing_requests or settings.max_queue + _IN_FLIGHT_MARGIN
    replicas = options.max_replicas if options.max_replicas is not None else options.replicas
    queued = options.max_queued_requests if options.max_queued_requests >= 0 else _UNBOUNDED_QUEUE
    return {
        "name": INGRESS_NAME,
        "num_replicas": options.ingress_replicas,
        "ray_actor_options": {"num_cpus": 0},
        "max_ongoing_requests": per_replica * replicas + queued + _IN_FLIGHT_MARGIN * 4,
        "logging_config": _logging_config(settings.log_level),
    }


_UNBOUNDED_QUEUE = 4096
"""What the ingress budgets for the model tier's queue when it has no limit."""


def _logging_config(log_level: str) -> dict[str, Any]:
    # uvicorn's level names, as `serve --log-level` takes them, in Ray's terms; the access log only at info.
    level = {"trace": "DEBUG", "debug": "DEBUG", "info": "INFO", "warning": "WARNING", "error": "ERROR"}
    name = level.get(log_level.lower(), "CRITICAL" if log_level.lower() == "critical" else "INFO")
    return {"log_level": name, "enable_access_log": name in ("DEBUG", "INFO")}


def _backpressure_config(retry_after_s: float) -> Any:
    try:
        from ray.serve.config import BackpressureConfig
    except ImportError:
        return None  # an older Ray: its queue limit answers 503 without Retry-After
    return BackpressureConfig(status_code=429, retry_after_s=retry_after_s)


class ReplicaHeaderMiddleware:
    """Pure ASGI middleware adding ``x-lychee-replica: <replica id>`` to every HTTP response."""

    def __init__(self, app: Any, replica: str) -> None:
        self.app = app
        self.header = (REPLICA_HEADER.encode(), replica.encode())

    async def __call__(self, scope: dict[str, Any], receive: Callable[..., Any], send: Callable[..., Any]) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return

        async def send_with_header(message: dict[str, Any]) -> None:
            if message["type"] == "http.response.start":
                message = {**message, "headers": [*message.get("headers", []), self.header]}
            await send(message)

        await self.app(scope, receive, send_with_header)


def replica_app(overrides: Mapping[str, Any], replica: str) -> Any:
    """The service's app as one replica runs it: settings from this process's environment and ``overrides``.

    The environment is read here, in the replica, so that a key from a Kubernetes Secret in the pod's
    environment reaches the service without travelling through Ray's control plane.
    """
    from lychee_rerank.core.server.app import create_app, load_reranker

    settings = ServerSettings.from_env(**overrides)
    app = create_app(load_reranker(settings), settings)
    app.add_middleware(ReplicaHeaderMiddleware, replica=replica)
    return app


class ModelReplica:
    """A model replica: the service's app around one model, answering requests the ingress hands over whole.

    A Ray Serve deployment class (``serve.deployment(ModelReplica)``): Ray builds one per replica actor.
    """

    # Ray runs an `async def __init__` on the replica's event loop, where requests will run: the app's
    # lifespan (its scheduler) must start there.
    async def __init__(self, overrides: Mapping[str, Any]) -> None:  # type: ignore[misc]
        from ray import serve

        from lychee_rerank.core.server.forwarding import AppHost

        self.replica = serve.get_replica_context().replica_id.unique_id
        self.app = replica_app(overrides, self.replica)
        self.host = AppHost(self.app)
        await self.host.start()

    async def answer(self, scope: dict[str, Any], body: bytes) -> list[dict[str, Any]]:
        """One request through the app: the ASGI messages it sends."""
        return await self.host.respond(scope, body)

    def check_health(self) -> None:
        """Ray's health check: a replica whose scheduler has stopped is replaced."""
        if not self.app.state.scheduler.running:
            raise RuntimeError(f"replica {self.replica}: the scheduler is not running")

    async def __del__(self) -> None:
        await self.host.stop()


def replica_trouble(error: BaseException, retry_after_s: float) -> ReplicaTrouble | None:
    """What an error from the model deployment's handle means for the request (see :class:`Forwarder`).

    - the replica's actor died or cannot be reached (``RayActorError``): replay on another;
    - the model deployment's queue is full (``BackPressureError``): 429 with ``Retry-After``;
    - the deployment failed to deploy (``DeploymentUnavailableError``): 503 with ``Retry-After``;
    - anything else is a fault of ours: ``None`` (500, logged).
    """
    from ray.exceptions import RayActorError
    from ray.serve.exceptions import BackPressureError, DeploymentUnavailableError

    from lychee_rerank.core.server.forwarding import ReplicaTrouble

    if isinstance(error, BackPressureError):
        wait = getattr(error, "retry_after_s", None) or retry_after_s
        return ReplicaTrouble(
            retry=False,
            status=429,
            retry_after_s=wait,
            message="every replica is busy and Ray Serve's queue in front of them is full; "
            "retry after the Retry-After delay",
        )
    if isinstance(error, RayActorError):
        return ReplicaTrouble(retry=True)
    if isinstance(error, DeploymentUnavailableError):
        return ReplicaTrouble(
            retry=False,
            status=503,
            retry_after_s=retry_after_s,
            message="the model replicas failed to start (see `serve status`); retry once they run",
        )
    return None


INGRESS_METRIC = "lychee_ingress_outcomes"
"""Ray Serve counter of what the ingress answered itself, by ``outcome``: ``replayed`` (a request retried on
another replica after its replica died), ``unavailable`` (503), ``overloaded`` (429), ``timeout`` (504),
``error`` (500). Exported with Ray's metrics as ``ray_lychee_ingress_outcomes_total``, beside Ray Serve's own."""


def ingress_counter() -> Callable[[str], None]:
    """Increments :data:`INGRESS_METRIC` for an outcome; made inside the ingress replica."""
    from ray.serve.metrics import Counter

    counter = Counter(
        INGRESS_METRIC,
        description="Requests the lychee-rerank ingress answered itself or replayed, by outcome.",
        tag_keys=("outcome",),
    )

    def count(outcome: str) -> None:
        counter.inc(tags={"outcome": outcome})

    return count


def build_application(overrides: Mapping[str, Any], options: RayOptions) -> Any:
    """The Serve application (the ingress bound to the model deployment) for ``serve.run``.

    Args:
        overrides: Service settings by field name; each replica applies them over its own environment.
        options: Replicas, autoscaling, queue limits, resources.
    """
    import ray
    from ray import serve

    settings = ServerSettings.from_env(**overrides)  # fails here, not in every replica, on a bad value
    frozen = dict(overrides)

    def cluster_gpus() -> float:
        return float(ray.cluster_resources().get("GPU", 0)) if ray.is_initialized() else 0.0

    if settings.ui and options.ingress_replicas > 1:
        raise LycheeError(
            "the UI keeps each browser session in one ingress replica, and Ray routes a session's requests to "
            "any of them: give --ingress-replicas 1, or --no-ui (ui: false in a Serve config)"
        )
    retry_after_s = options.retry_after_s
    serving = f"model {settings.served_model_name or settings.model} on Ray Serve"

    def build_ingress_app() -> Any:
        # Runs inside each ingress replica when it starts; its environment holds the key.
        from lychee_rerank.core.server.ingress import ingress_app

        app_name = serve.get_replica_context().app_name
        replicas = serve.get_deployment_handle(DEPLOYMENT_NAME, app_name=app_name)
        return ingress_app(
            ServerSettings.from_env(**frozen),
            replicas,
            lambda error: replica_trouble(error, retry_after_s),
            retry_after_s=retry_after_s,
            serving=serving,
            on_outcome=ingress_counter(),
        )

    model = serve.deployment(ModelReplica, **deployment_options(options, settings, cluster_gpus=cluster_gpus))
    ingress = serve.deployment(serve.ingress(build_ingress_app)(), **ingress_options(options, settings))
    # The UI is the ingress's (a browser session must stay in one process); the replicas serve none.
    # The model deployment is bound as the ingress's argument so that it is part of the application.
    return ingress.bind(model.bind({**frozen, "ui": False}))


def build_app(args: Mapping[str, Any]) -> Any:
    """Ray Serve's application builder: ``import_path: lychee_rerank.core.server.ray_serve:build_app``.

    ``args`` (a Serve config's ``args:``, or ``serve run ... key=value``) holds service settings by field
    name (``model``, ``max_queue``, ``torch_threads``...) and :class:`RayOptions` fields (``replicas``,
    ``min_replicas``...); strings are parsed as their ``LYCHEE_*`` variables are. A config's
    ``deployments:`` entry named ``LycheeRerank`` overrides the options chosen here.

    Raises:
        ValueError: An unknown name or a bad value, saying which.
    """
    settings_fields = {field.name: field.type for field in fields(ServerSettings)}
    option_fields = {field.name: field.type for field in fields(RayOptions)}
    overrides: dict[str, Any] = {}
    chosen: dict[str, Any] = {}
    for name, value in args.items():
        key = name.replace("-", "_")
        if key in settings_fields:
            overrides[key] = parse_value(key, settings_fields[key], value) if isinstance(value, str) else value
        elif key in option_fields and key != "address":
            chosen[key] = parse_value(key, option_fields[key], value) if isinstance(value, str) else value
        else:
            known = ", ".join(sorted({*settings_fields, *option_fields} - {"address"}))
            raise ValueError(f"build_app: unknown argument {name!r}; known: {known}")
    return build_application(overrides, RayOptions(**chosen))


def serve_on_ray(settings: ServerSettings, options: RayOptions) -> int:
    """``lychee-rerank serve --ray``: deploys on Ray Serve at ``settings.host:port`` and waits until interrupted."""
    from lychee_rerank.core.extras import require

    ray = require("ray", "ray")
    from ray import serve

    # `docker stop` and Kubernetes send SIGTERM: leave as on Ctrl-C, so that Serve and a local Ray shut down.
    signal.signal(signal.SIGTERM, signal.default_int_handler)
    ray.init(address=options.address, ignore_reinit_error=True)
    serve.start(http_options={"host": settings.host, "port": settings.port})
    overrides = {name: value for name, value in asdict(settings).items() if value is not None}
    application = build_application(overrides, options)
    serve.run(application, name=APP_NAME, route_prefix="/", blocking=False)
    logger.warning("serving on Ray Serve at http://%s:%s; Ctrl-C stops", settings.host, settings.port)
    print(f"lychee-rerank on Ray Serve: http://{settings.host}:{settings.port} (Ctrl-C stops)", flush=True)
    try:
        while True:
            time.sleep(3600)
    except KeyboardInterrupt:
        pass
    finally:
        serve.shutdown()
    return 0
