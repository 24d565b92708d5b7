"""``lychee-rerank serve``: load the model, then run the service with uvicorn.

Every setting is a flag and a ``LYCHEE_*`` environment variable (see
:class:`~lychee_rerank.core.server.settings.ServerSettings`); a flag wins over the environment.
Registration is cheap: FastAPI, uvicorn and the model are imported only when the command runs.
"""

from __future__ import annotations

import argparse
import sys
from dataclasses import fields
from typing import Any

from lychee_rerank.core.server.settings import ServerSettings, env_var

_HELP = {
    "model": "hub id, checkpoint folder, or 'tiny'",
    "served_model_name": "model name reported in responses",
    "api_key": "require 'Authorization: Bearer KEY' on scoring routes",
    "local_roots": "comma-separated folders under which local image paths may be read (default: none)",
    "allow_private_urls": "allow image URLs on loopback/private/link-local addresses",
    "json_documents": "parse string documents holding JSON {text, image} objects by default",
}


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
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    defaults = ServerSettings()
    for field in fields(ServerSettings):
        _add_setting(parser, field.name, str(field.type), getattr(defaults, field.name))
    parser.set_defaults(handler=serve)


def settings_from_args(args: argparse.Namespace) -> ServerSettings:
    """Defaults, then the environment, then the flags given."""
    return ServerSettings.from_env(**{field.name: getattr(args, field.name, None) for field in fields(ServerSettings)})


def serve(args: argparse.Namespace) -> int:
    """Loads the model and serves until interrupted."""
    from lychee_rerank.core.local import LocalReranker
    from lychee_rerank.core.profiles import TINY_MODEL_NAME
    from lychee_rerank.core.server.app import create_app
    from lychee_rerank.core.server.connections import GuardedServer

    settings = settings_from_args(args)
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
    )
    app = create_app(reranker, settings)
    server = GuardedServer(
        app, settings.connection_limits(), host=settings.host, port=settings.port, log_level=settings.log_level
    )
    server.run()
    return 0
