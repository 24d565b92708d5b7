"""``lychee-rerank serve``: load the model, then run the service with uvicorn.

Every setting is a flag and a ``LYCHEE_*`` environment variable (:class:`ServerSettings`); a flag wins over
the environment. Registration is cheap: FastAPI, uvicorn and the model are imported only when the command
runs, and a missing one is a one-line error naming the ``[server]`` extra.
"""

from __future__ import annotations

import argparse
import sys
from dataclasses import fields
from typing import Any

from lychee_rerank.core.extras import require
from lychee_rerank.core.server.ray_serve import add_ray_arguments, options_from_args, serve_on_ray
from lychee_rerank.core.server.settings import ServerSettings, env_var

DESCRIPTION = """\
Loads the model and serves it over HTTP: the Cohere/Jina rerank API (/v1/rerank, /v2/rerank), the
TEI rerank API (/rerank), the batch API (/rerank_batch, /score), /health, Prometheus /metrics, the
OpenAPI docs (/docs) and, with the [ui] extra, a web UI (/ui).

Every setting below is a flag and an environment variable; a flag wins over the variable. Prefer
LYCHEE_API_KEY to --api-key, which other users can see in the process list.
"""

_HELP = {
    "model": "hub id, checkpoint folder, or 'tiny'",
    "served_model_name": "model name reported in responses",
    "api_key": "require 'Authorization: Bearer KEY' on scoring routes",
    "local_roots": "comma-separated folders under which local image paths may be read (default: none)",
    "allow_private_urls": "allow image URLs on loopback/private/link-local addresses",
    "json_documents": "parse string documents holding JSON {text, image} objects by default",
    "image_cache_bytes": "memory for recently decoded images, in bytes, each kept at the model's pixel bounds (0: off)",
    "vision_cache_bytes": "memory for vision-tower outputs of recent images, in bytes, on the model's device (0: off)",
    # -- the request path
    "request_timeout_s": "seconds a request may take from arrival to answer, image downloads included; then 504",
    "max_request_text_bytes": "UTF-8 bytes of text (query, documents, instruction) one request may hold; more is 413",
    "max_fetches_per_request": "image URLs of one request downloaded at once",
    "max_concurrent_fetches": "image URLs downloaded at once by the whole service (shared fairly between requests)",
    "prepare_threads": "threads that truncate, decode images and tokenise requests before they are queued",
}


_SWITCH_INTERVAL_S = 0.0005


def _add_setting(parser: argparse.ArgumentParser, name: str, annotation: str, default: Any) -> None:
    flag = "--" + name.replace("_", "-")
    help_text = f"{_HELP.get(name, name.replace('_', ' '))} (env {env_var(name)}; default {default!r})"
    if annotation.startswith("bool"):
        parser.add_argument(flag, dest=name, action=argparse.BooleanOptionalAction, default=None, help=help_text)
    elif annotation.startswith("int"):
        parser.add_argument(flag, dest=name, type=int, default=None, help=help_text)
    elif annotation.startswith("float"):
        parser.add_argument(flag, dest=name, type=float, default=None, help=help_text)
    elif annotation.startswith("tuple"):
        parser.add_argument(
            flag,
            dest=name,
            type=lambda text: tuple(part for part in text.split(",") if part),
            default=None,
            help=help_text,
        )
    else:
        parser.add_argument(flag, dest=name, default=None, help=help_text)


def register(subparsers: Any) -> None:
    """Adds the ``serve`` command to ``lychee-rerank``."""
    parser = subparsers.add_parser(
        "serve",
        help="run the HTTP service (Cohere/Jina, TEI and batch APIs, metrics, UI)",
        description=DESCRIPTION,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    defaults = ServerSettings()
    for field in fields(ServerSettings):
        _add_setting(parser, field.name, str(field.type), getattr(defaults, field.name))
    # Ray Serve: `serve --ray --replicas N` (core/server/ray_serve.py).
    add_ray_arguments(parser)
    parser.set_defaults(handler=serve)


def settings_from_args(args: argparse.Namespace) -> ServerSettings:
    """Defaults, then the environment, then the flags given."""
    return ServerSettings.from_env(**{field.name: getattr(args, field.name, None) for field in fields(ServerSettings)})


def serve(args: argparse.Namespace) -> int:
    """Loads the model and serves until interrupted."""
    for module in ("fastapi", "uvicorn", "torch", "transformers"):
        require(module, "server")  # one line naming the extra, not a traceback from deep inside
    import uvicorn

    from lychee_rerank.core.local import LocalReranker
    from lychee_rerank.core.profiles import TINY_MODEL_NAME
    from lychee_rerank.core.server.app import create_app

    settings = settings_from_args(args)
    # -- the request path: the event loop must win the GIL back quickly from threads that parse,
    # tokenise and decode; the default 5 ms hand-over, paid on every system call, made /health wait.
    sys.setswitchinterval(_SWITCH_INTERVAL_S)
    # Ray Serve: the same app from N replicas; each replica loads its own model.
    if getattr(args, "ray", False):
        return serve_on_ray(settings, options_from_args(args))
    if settings.torch_threads is not None:
        import torch

        torch.set_num_threads(settings.torch_threads)
    if settings.model == TINY_MODEL_NAME:
        print("NOTE: --model tiny is a small random model: its scores mean nothing.", file=sys.stderr)
    reranker = LocalReranker(
        model=settings.model,
        device=settings.device,
        dtype=settings.dtype,
        profile=settings.profile,
        max_batch_tokens=settings.max_batch_tokens,
        media_policy=settings.media_policy(),
        image_cache_bytes=settings.image_cache_bytes,
        vision_cache_bytes=settings.vision_cache_bytes,
    )
    app = create_app(reranker, settings)
    uvicorn.run(app, host=settings.host, port=settings.port, log_level=settings.log_level)
    return 0
