"""Hybrid search in Qdrant (dense + BM25 sparse, fused with RRF), then Lychee reranking of text and photos.

The collection holds the demo's catalogue: each point's payload has a description (``text``), the path of
its photo (``image_path``) and its ``kind``. The first stage fuses two prefetches with reciprocal rank
fusion; :class:`~lychee_rerank.adapters.qdrant.QdrantReranker` reranks the fused window by description
and photo together and returns the best few, each with the rerank score as ``score`` and the RRF score
under ``payload["_first_stage_score"]``.

The dense vectors are hashed character trigrams, a stand-in that needs no download; use your own
embedding model in practice.

Run it against the compose stack (Qdrant on :6333, the rerank service on :8000):

    docker compose --profile gpu up -d qdrant rerank
    python examples/qdrant_hybrid_rerank.py "white linen shirt for summer"

or offline, with Qdrant's local mode and a model in this process:

    python examples/qdrant_hybrid_rerank.py --qdrant :memory: --model ./lychee-rerank-mm
    python examples/qdrant_hybrid_rerank.py --qdrant :memory: --model tiny   # untrained: exercises the code only
    python examples/qdrant_hybrid_rerank.py --qdrant ./qdrant-data --model tiny   # embedded, on disk
"""

from __future__ import annotations

import argparse
import hashlib
import math
import os
import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from lychee_rerank.core.extras import exit_unless_installed

# Before the imports below, so a missing framework is one line naming its extra, not a traceback.
exit_unless_installed("examples/qdrant_hybrid_rerank.py", {"qdrant_client": "qdrant"})

from qdrant_client import QdrantClient, models

from lychee_rerank.adapters.demo.corpus import CorpusItem, ensure_corpus
from lychee_rerank.adapters.demo.sparse import BM25
from lychee_rerank.adapters.demo.table import ranking_table
from lychee_rerank.adapters.qdrant import FIRST_STAGE_SCORE_KEY, RERANK_FAILED_KEY, QdrantReranker
from lychee_rerank.core import LycheeError, Reranker, as_reranker

COLLECTION = "lychee_hybrid_example"
DENSE_SIZE = 256


def dense_vector(text: str) -> list[float]:
    """A unit vector of hashed character trigrams: similar spellings land close, nothing is downloaded."""
    vector = [0.0] * DENSE_SIZE
    padded = f"  {text.lower()}  "
    for start in range(len(padded) - 2):
        digest = hashlib.blake2b(padded[start : start + 3].encode("utf-8"), digest_size=4).digest()
        vector[int.from_bytes(digest, "little") % DENSE_SIZE] += 1.0
    norm = math.sqrt(sum(value * value for value in vector)) or 1.0
    return [value / norm for value in vector]


def open_client(location: str) -> QdrantClient:
    """``:memory:``, an http(s) URL (a Qdrant server), or a folder (the embedded, on-disk local mode)."""
    if location == ":memory:":
        return QdrantClient(":memory:")
    if location.startswith(("http://", "https://")):
        return QdrantClient(url=location)
    return QdrantClient(path=location)


def load_collection(client: QdrantClient, items: Sequence[CorpusItem], images: Path, bm25: BM25) -> None:
    """(Re)creates the collection with a dense and a sparse vector per item."""
    if client.collection_exists(COLLECTION):
        client.delete_collection(COLLECTION)
    client.create_collection(
        COLLECTION,
        vectors_config={"dense": models.VectorParams(size=DENSE_SIZE, distance=models.Distance.COSINE)},
        sparse_vectors_config={"bm25": models.SparseVectorParams(modifier=models.Modifier.NONE)},
    )
    points = []
    for item in items:
        sparse = bm25.document_vector(item.text)
        points.append(
            models.PointStruct(
                id=item.id,
                vector={
                    "dense": dense_vector(item.text),
                    "bm25": models.SparseVector(indices=sparse.indices, values=sparse.values),
                },
                payload={"text": item.text, "image_path": str(images / item.image), "kind": item.kind},
            )
        )
    client.upsert(COLLECTION, points=points, wait=True)


def hybrid_arguments(query: str, bm25: BM25, kind: str | None) -> dict[str, Any]:
    """``query_points`` arguments: dense and BM25 prefetches fused with RRF, optionally filtered by kind."""
    sparse = bm25.query_vector(query)
    prefetch = [models.Prefetch(query=dense_vector(query), using="dense", limit=30)]
    if sparse.indices:  # no query word in the corpus: the sparse side has nothing to say
        prefetch.append(
            models.Prefetch(
                query=models.SparseVector(indices=sparse.indices, values=sparse.values), using="bm25", limit=30
            )
        )
    arguments: dict[str, Any] = {"prefetch": prefetch, "query": models.FusionQuery(fusion=models.Fusion.RRF)}
    if kind:
        arguments["query_filter"] = models.Filter(
            must=[models.FieldCondition(key="kind", match=models.MatchValue(value=kind))]
        )
    return arguments


def local_reranker(model: str, device: str | None) -> Reranker:
    """The model in this process: needs the [local] extra (torch), which the service URL does not."""
    exit_unless_installed("--model", {"torch": "local", "transformers": "local"})
    from lychee_rerank.core import LocalReranker

    return LocalReranker(model=model, device=device)


def build_reranker(model: str | None, device: str | None, rerank_url: str) -> Reranker:
    """A model in this process when ``--model`` is given, else the service at ``rerank_url``."""
    if model:
        return local_reranker(model, device)
    return as_reranker(rerank_url)


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("query", nargs="?", default="white linen shirt for summer", help="what to search for")
    parser.add_argument(
        "--qdrant",
        default=os.environ.get("QDRANT_URL", "http://localhost:6333"),
        help="a Qdrant URL, :memory:, or a folder for the embedded local mode (env QDRANT_URL)",
    )
    parser.add_argument(
        "--rerank-url",
        default=os.environ.get("RERANK_URL", "http://localhost:8000"),
        help="the lychee-rerank service, used unless --model is given (env RERANK_URL)",
    )
    parser.add_argument("--model", help="rerank in this process with this model: a folder, a hub id, or tiny")
    parser.add_argument("--device", help="cuda, cpu...; default: CUDA when available (with --model)")
    parser.add_argument("--kind", choices=["product", "figure"], help="filter the first stage by kind")
    parser.add_argument("--window", type=int, default=20, help="candidates fused and reranked")
    parser.add_argument("--limit", type=int, default=5, help="results shown after reranking")
    parser.add_argument("--score-threshold", type=float, help="drop results whose rerank score is below it")
    parser.add_argument("--corpus", help="folder for the demo pictures; default: a temporary folder")
    return parser.parse_args(argv)


def run(args: argparse.Namespace, corpus: Path) -> int:
    items = ensure_corpus(corpus)
    bm25 = BM25.fit(item.text for item in items)
    client = open_client(args.qdrant)
    try:
        load_collection(client, items, corpus / "images", bm25)
        arguments = hybrid_arguments(args.query, bm25, args.kind)
        reranker = build_reranker(args.model, args.device, args.rerank_url)
        first = client.query_points(COLLECTION, limit=args.window, **arguments).points
        print(f"query: {args.query!r}  qdrant: {args.qdrant}  reranker: {args.model or args.rerank_url}\n")
        print(f"first stage (dense + BM25, RRF), top {len(first)}:")
        print(ranking_table([(p.score, f"p{p.id}", str((p.payload or {})["text"])) for p in first]))
        response = QdrantReranker(
            client, reranker, text_fields=["text"], image_fields=["image_path"], window=args.window
        ).query_points(
            COLLECTION,
            rerank_query=args.query,
            limit=args.limit,
            score_threshold=args.score_threshold,
            with_payload=["text"],  # image_path is fetched to rerank, then stripped again
            **arguments,
        )
    finally:
        client.close()
    failed = any((p.payload or {}).get(RERANK_FAILED_KEY) for p in response.points)
    print(f"\nreranked by description and photo{' (FAILED: first-stage order)' if failed else ''}:")
    rows = [
        (p.score, f"p{p.id}", f"{(p.payload or {})['text']}  [RRF {(p.payload or {})[FIRST_STAGE_SCORE_KEY]:.3f}]")
        for p in response.points
    ]
    print(ranking_table(rows, text_width=80))
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """Runs the example; returns the process exit status."""
    args = parse_args(argv)
    try:
        if args.corpus:
            return run(args, Path(args.corpus))
        with tempfile.TemporaryDirectory(prefix="lychee-qdrant-example-") as folder:
            return run(args, Path(folder))
    except LycheeError as error:
        print(f"error: {error}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
