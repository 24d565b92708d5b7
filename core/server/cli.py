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
Load a reranking model and serve it over HTTP: /v1/rerank and /v2/rerank (Cohere/Jina), /rerank (also
TEI), /rerank_batch, /score, /health, /metrics, the API docs at /docs and a browser UI at /ui.

Every option can also be set by its environment variable (shown with each option); an option given
here wins over the variable. With --api-key, /health, /metrics, /docs and /openapi.json stay open
(--protect-docs closes all but /health) and the UI asks for the key as its password.
Prefer LYCHEE_API_KEY to --api-key, which other users can see in the process list.
"""

_HELP = {
    "model": "the model: a Hugging Face id, a local checkpoint folder, or 'tiny', a random test model whose "
    "scores mean nothing (default: the profile's model, vec-ai/lychee-rerank-mm for lychee)",
    "served_model_name": "the model name reported in answers (default: the model's own name)",
    "host": "the address to listen on; 0.0.0.0 listens on every interface",
    "port": "the port to listen on",
    "header_timeout_s": "seconds a client has to send a request's headers after connecting (or after its "
    "previous answer); slower clients get 408 and are disconnected",
    "body_timeout_s": "seconds a client has to send a request's whole body once its headers are in; then 408",
    "keep_alive_timeout_s": "seconds an idle keep-alive connection is kept open",
    "max_connections": "open connections at most (lowered to fit the open-file limit, ulimit -n); when full, "
    "the connection that has stalled longest is closed to make room",
    "protect_docs": "with --api-key, also require the key on /metrics, /docs and /openapi.json",
    "device": "where the model runs: cuda, cuda:1, cpu... (default: a GPU when there is one)",
    "dtype": "the weights' type: bfloat16, float16 or float32 (default: bfloat16 on a GPU, float32 on CPU)",
    "profile": "the model family's prompt layout: lychee, qwen3-vl-reranker or monoqwen2-vl",
    "api_key": "require 'Authorization: Bearer KEY' on the scoring routes (and as the UI's password)",
    "max_documents": "documents per request at most; more is answered 413",
    "max_body_bytes": "request body size in bytes at most; more is answered 413 before it is parsed",
    "max_image_bytes": "size of one image in bytes at most; more is answered 413",
    "max_image_pixels": "width times height of one image at most, checked before decoding; more is answered 422",
    "max_document_tokens": "tokens of a document's (and the query's) text; longer text is cut",
    "max_queue": "requests waiting for the model at most; more is answered 429 with Retry-After",
    "max_batch_tokens": "padded tokens per forward pass; lower it when the GPU runs out of memory",
    "max_batch_memory": "bytes of activations one forward pass may hold, estimated from the model's shape "
    "(tokens, the shared prefix, vision patches); lower it when the GPU runs out of memory",
    "max_wait_ms": "milliseconds to wait for more requests to batch together",
    "request_timeout_s": "seconds a request may take from arrival to answer, image downloads included; then 504",
    "allow_urls": "fetch images given as http(s) URLs",
    "allow_private_urls": "also fetch image URLs on loopback, private or link-local addresses (off: only "
    "public hosts, which keeps clients from reaching internal services)",
    "local_roots": "comma-separated folders under which image file paths may be read (default: no local files)",
    "fetch_timeout_s": "seconds allowed to download one image URL",
    "json_documents": "read string documents that hold a JSON {text, image} object as multimodal documents",
    "ui": "serve the browser UI at /ui (needs the ui extra: pip install 'lychee-rerank[ui]')",
    "torch_threads": "CPU threads for the model (default: torch's choice; 1 is often fastest on a small or "
    "shared machine)",
    "log_level": "how much the server logs: critical, error, warning, info, debug or trace",
    "image_cache_bytes": "memory for recently decoded images, in bytes, each kept at the model's pixel bounds (0: off)",
    "vision_cache_bytes": "memory for vision-tower outputs of recent images, in bytes, on the model's device (0: off)",
    "max_request_text_bytes": "UTF-8 bytes of text (query, documents, instruction) one request may hold; more is 413",
    "max_fetches_per_request": "image URLs of one request downloaded at once",
    "max_concurrent_fetches": "image URLs downloaded at once by the whole service (shared fairly between requests)",
    "prepare_threads": "threads that truncate, decode images and tokenise requests before they are queued",
}


_SWITCH_INTERVAL_S = 0.0005


def _add_setting(parser: argparse.ArgumentParser, name: str, annotation: str, default: Any) -> None:
    flag = "--" + name.replace("_", "-")
    text = _HELP.get(name, name.replace("_", " "))
    if "(default" in text:  # the help says the default in words
        help_text = f"{text} (env {env_var(name)})"
    else:
        shown = "none" if default in (None, ()) else str(default).lower() if isinstance(default, bool) else default
        help_text = f"{text} (env {env_var(name)}; default: {shown})"
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

    from lychee_rerank.core.profiles import TINY_MODEL_NAME
    from lychee_rerank.core.server.app import create_app, load_reranker
    from lychee_rerank.core.server.connections import GuardedServer

    settings = settings_from_args(args)
    # -- the request path: the event loop must win the GIL back quickly from threads that parse,
    # tokenise and decode; the default 5 ms hand-over, paid on every system call, made /health wait.
    sys.setswitchinterval(_SWITCH_INTERVAL_S)
    # Ray Serve: the same app from N replicas; each replica loads its own model.
    if getattr(args, "ray", False):
        return serve_on_ray(settings, options_from_args(args))
    if settings.model == TINY_MODEL_NAME:
        print("NOTE: --model tiny is a small random model: its scores mean nothing.", file=sys.stderr)
    app = create_app(load_reranker(settings), settings)
    server = GuardedServer(
        app, settings.connection_limits(), host=settings.host, port=settings.port, log_level=settings.log_level
    )
    server.run()
    return 0
