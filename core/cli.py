"""The ``lychee-rerank`` command line: ``score`` here; ``serve``, ``demo`` and the plugins' commands come
through the ``lychee_rerank.commands`` entry points. Errors (bad input, a missing extra) print as one line.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from lychee_rerank.core.display import cell
from lychee_rerank.core.errors import LycheeError
from lychee_rerank.core.inputs import Document, Query
from lychee_rerank.core.profiles import INSTRUCTION_PRESETS, PROFILES, TINY_MODEL_NAME

SCORE_DESCRIPTION = """\
Ranks a few documents against a query with the model in this process and prints a table
(or JSON with --json). Needs the [local] extra.

Give documents in order with --doc TEXT and --doc-image IMAGE: an image that directly follows a
text document belongs to it; any other image is a document of its own. --docs-file reads JSON
lines instead, one document per line: a string, or {"text": ..., "image": ...}. Images are paths,
http(s) URLs, data URIs or base64.

example:
  lychee-rerank score --model tiny --query "white linen shirt" \\
      --doc "White linen shirt" --doc-image examples/images/shirt_white.png --doc "Red shoes"
"""

TINY_BANNER = (
    "NOTE: --model tiny is a small random model: its scores exercise the code and mean nothing.\n"
    "      For real relevance scores pass --model vec-ai/lychee-rerank-mm (or a folder holding it)."
)


class _DocumentAction(argparse.Action):
    """Collects ``--doc`` and ``--doc-image`` in command-line order, pairing text with a following image."""

    def __call__(
        self,
        parser: argparse.ArgumentParser,
        namespace: argparse.Namespace,
        values: str | Sequence[Any] | None,
        option_string: str | None = None,
    ) -> None:
        documents: list[dict[str, str]] = getattr(namespace, "documents", None) or []
        value = str(values)
        if self.dest == "doc_text":
            documents.append({"text": value})
        elif documents and "image" not in documents[-1] and getattr(namespace, "_last_was_text", False):
            documents[-1]["image"] = value
        else:
            documents.append({"image": value})
        namespace._last_was_text = self.dest == "doc_text"
        namespace.documents = documents


def _read_documents_file(path: str) -> list[dict[str, Any]]:
    documents = []
    for number, line in enumerate(Path(path).read_text(encoding="utf-8").splitlines(), start=1):
        if not line.strip():
            continue
        try:
            item = json.loads(line)
        except json.JSONDecodeError as error:
            raise LycheeError(f"{path}, line {number}: not JSON ({error.msg})") from None
        documents.append({"text": item} if isinstance(item, str) else item)
    return documents


def _score_command(args: argparse.Namespace) -> int:
    from lychee_rerank.core.local import LocalReranker

    raw_documents = list(getattr(args, "documents", None) or [])
    if args.docs_file:
        raw_documents.extend(_read_documents_file(args.docs_file))
    if not raw_documents:
        raise LycheeError("give at least one document with --doc TEXT, --doc-image IMAGE or --docs-file FILE")
    if args.query is None and args.query_image is None:
        raise LycheeError("give a query with --query TEXT and/or --query-image IMAGE")
    query = Query(text=args.query, image=args.query_image)
    documents = [Document(text=item.get("text"), image=item.get("image")) for item in raw_documents]

    if args.model == TINY_MODEL_NAME:
        print(TINY_BANNER, file=sys.stderr)
    reranker = LocalReranker(
        model=args.model,
        device=args.device,
        dtype=args.dtype,
        profile=args.profile,
        min_pixels=args.min_pixels,
        max_pixels=args.max_pixels,
    )
    results = reranker.rerank(
        query, documents, top_n=args.top_n, instruction=args.instruction, min_score=args.min_score
    )
    if args.json:
        rows = [
            {"rank": rank, "index": r.index, "score": r.score, **raw_documents[r.index]}
            for rank, r in enumerate(results, start=1)
        ]
        print(json.dumps(rows, ensure_ascii=False, indent=2))
        return 0
    print(f"model: {reranker.model_name}  device: {reranker.loaded.device}  dtype: {reranker.loaded.dtype}")
    print(f"query: {cell(query.text, 60).rstrip()}{'  [image] ' + str(query.image) if query.image else ''}")
    print()
    print(f"{'rank':>4}  {'score':>7}  {'doc':>3}  {'text':<48}  image")
    for rank, result in enumerate(results, start=1):
        document = result.document
        image = str(document.image) if isinstance(document.image, str) else ""
        print(f"{rank:>4}  {result.score:7.4f}  {result.index:>3}  {cell(document.text, 48)}  {image}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    """The argument parser for every ``lychee-rerank`` command."""
    parser = argparse.ArgumentParser(
        prog="lychee-rerank",
        description="Multimodal reranking with Lychee-Rerank-MM. Run 'lychee-rerank COMMAND --help' for a command.",
    )
    commands = parser.add_subparsers(dest="command", required=True)
    score = commands.add_parser(
        "score",
        help="rank documents against a query and print a table",
        description=SCORE_DESCRIPTION,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    score.add_argument("--query", help="the query text")
    score.add_argument("--query-image", help="the query image: a path, an http(s) URL, a data URI or base64")
    score.add_argument("--doc", dest="doc_text", action=_DocumentAction, help="a document's text (repeat)")
    score.add_argument(
        "--doc-image",
        dest="doc_image",
        action=_DocumentAction,
        help="a document's image; joins the --doc just before it (repeat)",
    )
    score.add_argument("--docs-file", help="JSON lines, one document per line: a string or {text, image}")
    score.add_argument(
        "--instruction",
        help=f"the task instruction, or a preset: {', '.join(sorted(INSTRUCTION_PRESETS))}",
    )
    score.add_argument(
        "--model",
        default=None,
        help="hub id, checkpoint folder, or 'tiny' (default: $LYCHEE_MODEL, else vec-ai/lychee-rerank-mm)",
    )
    score.add_argument("--profile", default="lychee", choices=sorted(PROFILES))
    score.add_argument("--device", help="cuda, cuda:1, cpu (default: cuda when available)")
    score.add_argument("--dtype", help="bfloat16, float16, float32 (default: bf16 on GPU, float32 on CPU)")
    score.add_argument("--min-pixels", type=int, help="lower bound on image pixels after resizing")
    score.add_argument("--max-pixels", type=int, help="upper bound on image pixels after resizing")
    score.add_argument("--top-n", type=int, help="show only the best N")
    score.add_argument("--min-score", type=float, help="hide documents scoring below this")
    score.add_argument("--json", action="store_true", help="print JSON instead of a table")
    score.set_defaults(handler=_score_command)
    _add_registered_commands(commands)
    return parser


COMMANDS_ENTRY_POINT = "lychee_rerank.commands"
"""Entry-point group through which other layers add subcommands (``serve``, ``demo``...).

Each entry point names a function ``register(subparsers)`` that adds its parser and sets ``handler``
(``handler(args) -> int``). Core never imports an adapter: adapters register themselves in pyproject.
Registration must stay cheap: heavy imports belong in the handler.
"""


def _add_registered_commands(commands: Any) -> None:
    from importlib.metadata import entry_points

    for entry_point in sorted(entry_points(group=COMMANDS_ENTRY_POINT), key=lambda ep: ep.name):
        try:
            register = entry_point.load()
        except ImportError as error:
            # Keep the other commands working; say why this one is missing when it is used.
            unavailable = commands.add_parser(
                entry_point.name, help=f"(unavailable: {error})", add_help=False, prefix_chars="\x00"
            )
            unavailable.add_argument("arguments", nargs=argparse.REMAINDER)
            unavailable.set_defaults(handler=_unavailable(entry_point.name, error))
            continue
        register(commands)


def _unavailable(name: str, error: ImportError) -> Any:
    def handler(args: argparse.Namespace) -> int:
        raise LycheeError(f"the {name!r} command cannot run here: {error}")

    return handler


def main(argv: Sequence[str] | None = None) -> int:
    """Runs the command line; returns the process exit status."""
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    args = build_parser().parse_args(argv)
    try:
        status: int = args.handler(args)
    except LycheeError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    return status


if __name__ == "__main__":
    sys.exit(main())
