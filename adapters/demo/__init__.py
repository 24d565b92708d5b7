"""``lychee-rerank demo``: a first stage in an embedded Qdrant, reranked by Lychee-Rerank-MM.

Registering the command is cheap (argparse only); the corpus, Qdrant, torch and the model are loaded
by the handler, so ``lychee-rerank --help`` stays fast.
"""

from __future__ import annotations

import argparse
from typing import Any

from lychee_rerank.core.extras import require
from lychee_rerank.core.profiles import INSTRUCTION_PRESETS, LYCHEE

DESCRIPTION = """\
Builds a small multimodal corpus (product photos and paper figures with captions, drawn on first use
into the cache folder), indexes the captions as BM25 sparse vectors in an embedded Qdrant, runs three
queries (or yours), reranks the top hits with the model, and prints both rankings side by side.

When the model cannot be fetched from the hub, the demo runs with 'tiny', an untrained model, and
says so in a banner. A --model folder that cannot be loaded is an error.
"""


def register(subparsers: Any) -> None:
    """Adds the ``demo`` command to ``lychee-rerank``'s subcommands."""
    parser = subparsers.add_parser(
        "demo",
        help="rerank BM25 results from an embedded Qdrant and show before/after",
        description=DESCRIPTION,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument(
        "--model",
        default=None,
        help=f"hub id, checkpoint folder, or 'tiny' (default: {LYCHEE.default_model})",
    )
    parser.add_argument("--device", help="cuda, cuda:1, cpu (default: cuda when available)")
    parser.add_argument("--top-k", type=int, default=10, help="first-stage hits to rerank per query (default: 10)")
    parser.add_argument("--query", help="run this query instead of the built-in ones")
    parser.add_argument("--query-image", help="a reference photo for --query (a file)")
    parser.add_argument(
        "--instruction",
        help=f"instruction for --query: text or a preset ({', '.join(sorted(INSTRUCTION_PRESETS))})",
    )
    parser.add_argument("--rebuild", action="store_true", help="redraw the corpus and rebuild the Qdrant collection")
    parser.set_defaults(handler=handler)


def handler(args: argparse.Namespace) -> int:
    """Runs the demo; see :func:`lychee_rerank.adapters.demo.run.run_demo`."""
    for module in ("torch", "transformers", "qdrant_client"):
        require(module, "demo")  # one line naming the extra before anything slow starts
    from lychee_rerank.adapters.demo.run import run_demo

    return run_demo(args)
