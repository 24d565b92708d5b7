"""Elasticsearch: BM25 first, then Lychee reranking of the top hits by description and photo.

Two ways, on the demo catalogue (a ``text`` description, an ``image_path`` photo and a ``kind`` per product):

- client side (default): :class:`~lychee_rerank.adapters.elasticsearch.ElasticsearchRescorer` runs the
  ordinary ``match`` search with ``size`` grown to the window, reranks the window's hits by text *and*
  photo, and combines the scores as Elasticsearch's ``query`` rescorer does. Each hit keeps
  ``_lychee.original_score`` (BM25) and ``_lychee.rerank_score``.
- server side (``--server-side``): a ``rerank`` inference endpoint with the ``custom`` service calls the
  service from inside Elasticsearch and a ``text_similarity_reranker`` retriever uses it (text only here;
  scores come back normalised by Elasticsearch, ``1 + p``). The endpoint's URL is the service as the
  cluster sees it (``http://rerank:8000`` inside the compose network). Needs the trial license the compose
  file turns on.

Run it against the compose stack:

    docker compose --profile gpu up -d elasticsearch rerank     # or --profile cpu ... rerank-cpu
    python examples/elasticsearch_rescore.py "white linen shirt for summer"
    python examples/elasticsearch_rescore.py --server-side
    python examples/elasticsearch_rescore.py --model tiny       # rerank in this process, no service needed
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from lychee_rerank.core.extras import exit_unless_installed

# Before the imports below, so a missing framework is one line naming its extra, not a traceback.
exit_unless_installed("examples/elasticsearch_rescore.py", {"elasticsearch": "elasticsearch"})

from elasticsearch import ApiError, Elasticsearch, TransportError

from lychee_rerank.adapters.demo.corpus import ensure_corpus
from lychee_rerank.adapters.demo.table import ranking_table
from lychee_rerank.adapters.elasticsearch import HIT_KEY, RESPONSE_KEY, ElasticsearchRescorer
from lychee_rerank.core import LycheeError, Reranker, as_reranker
from lychee_rerank.plugins.elasticsearch import install_inference_endpoint, text_similarity_reranker_body

INDEX = "lychee-example-products"


def index_catalogue(client: Elasticsearch, corpus: Path) -> None:
    """(Re)creates the index with the demo's products and figures."""
    client.indices.delete(index=INDEX, ignore_unavailable=True)
    client.indices.create(
        index=INDEX,
        mappings={
            "properties": {
                "text": {"type": "text"},
                "image_path": {"type": "keyword", "index": False},
                "kind": {"type": "keyword"},
            }
        },
    )
    for item in ensure_corpus(corpus):
        document = {"text": item.text, "image_path": str(corpus / "images" / item.image), "kind": item.kind}
        client.index(index=INDEX, id=f"p{item.id}", document=document)
    client.indices.refresh(index=INDEX)


def _rows(hits: Sequence[dict[str, Any]], note: str = "") -> list[tuple[float, str, str]]:
    rows = []
    for hit in hits:
        scores = hit.get(HIT_KEY) or {}
        extra = f"  [BM25 {scores['original_score']:.2f}]" if note == "bm25" and scores else ""
        rows.append((float(hit["_score"]), str(hit["_id"]), f"{hit['_source']['text']}{extra}"))
    return rows


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("query", nargs="?", default="white linen shirt for summer", help="what to search for")
    parser.add_argument(
        "--es-url",
        default=os.environ.get("ELASTICSEARCH_URL", "http://localhost:9200"),
        help="Elasticsearch (env ELASTICSEARCH_URL)",
    )
    parser.add_argument(
        "--rerank-url",
        default=os.environ.get("RERANK_URL", "http://localhost:8000"),
        help="the service as this machine reaches it, for client-side reranking (env RERANK_URL)",
    )
    parser.add_argument(
        "--cluster-rerank-url",
        default=os.environ.get("CLUSTER_RERANK_URL", "http://rerank:8000"),
        help="the service as Elasticsearch reaches it, for --server-side (env CLUSTER_RERANK_URL)",
    )
    parser.add_argument("--model", help="client side: rerank in this process with this model (folder, hub id, tiny)")
    parser.add_argument("--device", help="cuda, cpu...; with --model")
    parser.add_argument("--window", type=int, default=20, help="hits reranked")
    parser.add_argument("--size", type=int, default=5, help="hits shown")
    parser.add_argument("--server-side", action="store_true", help="rerank inside Elasticsearch instead")
    parser.add_argument("--corpus", help="folder for the demo pictures; default: a temporary folder")
    return parser.parse_args(argv)


def client_side(client: Elasticsearch, reranker: Reranker, args: argparse.Namespace) -> None:
    """The rescorer: BM25 window, reranked by description and photo, combined as ``total``."""
    rescorer = ElasticsearchRescorer(
        client, reranker, text_fields=("text",), image_field="image_path", window_size=args.window
    )
    response = rescorer.search(
        index=INDEX,
        query={"match": {"text": args.query}},
        size=args.size,
        # BM25 scores run to ~10 while rerank scores are probabilities: weigh BM25 down so the model decides.
        rescore={"window_size": args.window, "lychee": {"query_weight": 0.05, "rerank_weight": 1.0}},
    )
    status = response[RESPONSE_KEY]
    print(f"\nclient side, combined = 0.05 * BM25 + rerank (reranked: {status['reranked']}, error: {status['error']}):")
    print(ranking_table(_rows(response["hits"]["hits"], "bm25"), text_width=80))


def server_side(client: Elasticsearch, args: argparse.Namespace) -> None:
    """The inference endpoint and the ``text_similarity_reranker`` retriever."""
    result = install_inference_endpoint(client, args.cluster_rerank_url)
    print(f"\ninference endpoint {result.inference_id!r}: {result.action}")
    body = text_similarity_reranker_body(
        {"match": {"text": args.query}}, field="text", inference_text=args.query, rank_window_size=args.window
    )
    response = client.search(index=INDEX, size=args.size, **body)
    print("server side, text_similarity_reranker (Elasticsearch reports 1 + p):")
    print(ranking_table(_rows(response["hits"]["hits"]), text_width=80))


def local_reranker(model: str, device: str | None) -> Reranker:
    """The model in this process: needs the [local] extra (torch), which the service URL does not."""
    exit_unless_installed("--model", {"torch": "local", "transformers": "local"})
    from lychee_rerank.core import LocalReranker

    return LocalReranker(model=model, device=device)


def run(args: argparse.Namespace, corpus: Path) -> int:
    client = Elasticsearch(args.es_url, request_timeout=120)
    try:
        index_catalogue(client, corpus)
        first = client.search(index=INDEX, query={"match": {"text": args.query}}, size=args.size)
        print(f"query: {args.query!r}  elasticsearch: {args.es_url}\n\nfirst stage (BM25):")
        print(ranking_table(_rows(first["hits"]["hits"]), text_width=80))
        if args.server_side:
            server_side(client, args)
        else:
            reranker = local_reranker(args.model, args.device) if args.model else as_reranker(args.rerank_url)
            client_side(client, reranker, args)
    finally:
        client.close()
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """Runs the example; returns the process exit status."""
    args = parse_args(argv)
    try:
        if args.corpus:
            return run(args, Path(args.corpus))
        with tempfile.TemporaryDirectory(prefix="lychee-es-example-") as folder:
            return run(args, Path(folder))
    except (LycheeError, ApiError, TransportError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
