"""OpenSearch: a search pipeline whose ``rerank`` processor calls Lychee through ml-commons.

On the demo catalogue (a ``text`` description, its photo and a ``kind`` per product), this script:

1. indexes the catalogue; with ``--multimodal`` each document also gets a ``doc`` field holding the JSON
   string ``{"text": ..., "image": "data:image/png;base64,..."}``, which the service reads as text + photo;
2. installs (idempotently) the ml-commons connector to ``/v1/rerank`` (the built-in Cohere pre/post
   process functions), a remote model, and a search pipeline with a ``rerank`` response processor
   (:func:`lychee_rerank.plugins.opensearch.install_rerank_pipeline`; the connector's URL is the service as
   the cluster sees it, ``http://rerank:8000`` inside the compose network);
3. searches with ``search_pipeline`` and ``ext.rerank.query_context.query_text``: OpenSearch reranks the
   hits the query returns, so ``size`` is the rerank window.

``--client-side`` instead reranks on this machine with
:class:`~lychee_rerank.adapters.opensearch.OpenSearchRescorer` (no connector, no pipeline).

Run it against the compose stack (OpenSearch on :9201):

    docker compose --profile gpu up -d opensearch rerank     # or --profile cpu ... rerank-cpu
    python examples/opensearch_pipeline.py "white linen shirt for summer"
    python examples/opensearch_pipeline.py --multimodal
    python examples/opensearch_pipeline.py --client-side --model tiny   # rerank in this process
"""

from __future__ import annotations

import argparse
import base64
import json
import os
import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from lychee_rerank.core.extras import exit_unless_installed

# Before the imports below, so a missing framework is one line naming its extra, not a traceback.
exit_unless_installed("examples/opensearch_pipeline.py", {"opensearchpy": "opensearch"})

from opensearchpy import OpenSearch
from opensearchpy.exceptions import OpenSearchException

from lychee_rerank.adapters.demo.corpus import ensure_corpus
from lychee_rerank.adapters.demo.table import ranking_table
from lychee_rerank.adapters.opensearch import HIT_KEY, RESPONSE_KEY, OpenSearchRescorer
from lychee_rerank.core import LycheeError, Reranker, as_reranker
from lychee_rerank.plugins.opensearch import install_rerank_pipeline, rerank_search_body

INDEX = "lychee-example-products"


def index_catalogue(client: OpenSearch, corpus: Path) -> None:
    """(Re)creates the index: description, photo path, kind, and ``doc`` (text + photo as one JSON string)."""
    if client.indices.exists(index=INDEX):
        client.indices.delete(index=INDEX)
    mappings = {
        "properties": {
            "text": {"type": "text"},
            "image_path": {"type": "keyword", "index": False},
            "kind": {"type": "keyword"},
            "doc": {"type": "text", "index": False},  # read by the rerank processor, never searched
        }
    }
    client.indices.create(index=INDEX, body={"mappings": mappings})
    for item in ensure_corpus(corpus):
        photo = corpus / "images" / item.image
        # The cluster cannot read this machine's files: the photo travels inside the document, as a data URI.
        data_uri = "data:image/png;base64," + base64.b64encode(photo.read_bytes()).decode("ascii")
        document = {
            "text": item.text,
            "image_path": str(photo),
            "kind": item.kind,
            "doc": json.dumps({"text": item.text, "image": data_uri}),
        }
        client.index(index=INDEX, id=f"p{item.id}", body=document)
    client.indices.refresh(index=INDEX)


def _rows(hits: Sequence[dict[str, Any]]) -> list[tuple[float, str, str]]:
    return [(float(hit["_score"]), str(hit["_id"]), str(hit["_source"]["text"])) for hit in hits]


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("query", nargs="?", default="white linen shirt for summer", help="what to search for")
    parser.add_argument(
        "--os-url",
        default=os.environ.get("OPENSEARCH_URL", "http://localhost:9201"),
        help="OpenSearch (env OPENSEARCH_URL)",
    )
    parser.add_argument(
        "--cluster-rerank-url",
        default=os.environ.get("CLUSTER_RERANK_URL", "http://rerank:8000"),
        help="the service as OpenSearch reaches it, for the connector (env CLUSTER_RERANK_URL)",
    )
    parser.add_argument(
        "--rerank-url",
        default=os.environ.get("RERANK_URL", "http://localhost:8000"),
        help="the service as this machine reaches it, for --client-side (env RERANK_URL)",
    )
    parser.add_argument("--multimodal", action="store_true", help="rerank the text + photo `doc` field")
    parser.add_argument("--client-side", action="store_true", help="rerank on this machine instead of in OpenSearch")
    parser.add_argument("--model", help="--client-side: rerank in this process with this model (folder, hub id, tiny)")
    parser.add_argument("--device", help="cuda, cpu...; with --model")
    parser.add_argument("--window", type=int, default=20, help="hits reranked")
    parser.add_argument("--size", type=int, default=5, help="hits shown")
    parser.add_argument("--corpus", help="folder for the demo pictures; default: a temporary folder")
    return parser.parse_args(argv)


def pipeline(client: OpenSearch, args: argparse.Namespace) -> None:
    """Installs the connector, model and pipeline, then searches through the pipeline."""
    field = "doc" if args.multimodal else "text"
    installed = install_rerank_pipeline(
        client, args.cluster_rerank_url, document_fields=(field,), multimodal=args.multimodal
    )
    print(f"\npipeline {installed.pipeline_id!r} (model {installed.model_id}): {installed.actions}")
    body = rerank_search_body({"match": {"text": args.query}}, query_text=args.query, size=args.window)
    response = client.search(index=INDEX, body=body, params={"search_pipeline": installed.pipeline_id})
    print(f"reranked inside OpenSearch by {field!r} (top {args.size} of {args.window}):")
    print(ranking_table(_rows(response["hits"]["hits"][: args.size]), text_width=80))


def local_reranker(model: str, device: str | None) -> Reranker:
    """The model in this process: needs the [local] extra (torch), which the service URL does not."""
    exit_unless_installed("--model", {"torch": "local", "transformers": "local"})
    from lychee_rerank.core import LocalReranker

    return LocalReranker(model=model, device=device)


def build_reranker(args: argparse.Namespace) -> Reranker:
    """A model in this process when ``--model`` is given, else the service at ``--rerank-url``."""
    return local_reranker(args.model, args.device) if args.model else as_reranker(args.rerank_url)


def client_side(client: OpenSearch, args: argparse.Namespace) -> None:
    """The rescorer: BM25 window, reranked on this machine by description and photo."""
    rescorer = OpenSearchRescorer(
        client,
        build_reranker(args),
        text_fields=("text",),
        image_field="image_path",
        window_size=args.window,
        query_weight=0.05,  # BM25 runs to ~10, rerank scores are probabilities: let the model decide
    )
    response = rescorer.search(index=INDEX, body={"query": {"match": {"text": args.query}}, "size": args.size})
    status = response[RESPONSE_KEY]
    print(f"\nclient side, 0.05 * BM25 + rerank (reranked: {status['reranked']}, error: {status['error']}):")
    rows = [
        (score, name, f"{text}  [BM25 {hit[HIT_KEY]['original_score']:.2f}]")
        for (score, name, text), hit in zip(_rows(response["hits"]["hits"]), response["hits"]["hits"], strict=True)
    ]
    print(ranking_table(rows, text_width=80))


def run(args: argparse.Namespace, corpus: Path) -> int:
    client = OpenSearch(hosts=[args.os_url], timeout=120)
    try:
        index_catalogue(client, corpus)
        first = client.search(index=INDEX, body={"query": {"match": {"text": args.query}}, "size": args.size})
        print(f"query: {args.query!r}  opensearch: {args.os_url}\n\nfirst stage (BM25):")
        print(ranking_table(_rows(first["hits"]["hits"]), text_width=80))
        if args.client_side:
            client_side(client, args)
        else:
            pipeline(client, args)
    finally:
        client.close()
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """Runs the example; returns the process exit status."""
    args = parse_args(argv)
    try:
        if args.corpus:
            return run(args, Path(args.corpus))
        with tempfile.TemporaryDirectory(prefix="lychee-os-example-") as folder:
            return run(args, Path(folder))
    except (LycheeError, OpenSearchException) as error:
        print(f"error: {error}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
