"""``lychee-rerank demo``: BM25 in an embedded Qdrant, then Lychee-Rerank-MM, printed side by side.

The first stage is what many deployments already have: word matching (BM25 as Qdrant sparse vectors)
over captions. The second stage reads the caption and looks at the picture. Printing both rankings of
the same candidates next to each other shows what reranking changes.
"""

from __future__ import annotations

import argparse
import os
import sys
import textwrap
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, TextIO

# tqdm ships no type hints; it is always installed, since transformers and huggingface_hub need it.
from tqdm import tqdm

from lychee_rerank.adapters.demo.corpus import (
    CORPUS_VERSION,
    DEMO_QUERIES,
    CorpusItem,
    DemoQuery,
    corpus_items,
    ensure_corpus,
)
from lychee_rerank.adapters.demo.sparse import BM25
from lychee_rerank.core.display import cell
from lychee_rerank.core.errors import LycheeError, ModelLoadError
from lychee_rerank.core.inputs import Document, Query
from lychee_rerank.core.local import LocalReranker
from lychee_rerank.core.local.loading import choose_device, resolve_model_path
from lychee_rerank.core.profiles import INSTRUCTION_PRESETS, LYCHEE, TINY_MODEL_NAME, resolve_instruction
from lychee_rerank.core.testing.checkpoint import tiny_checkpoint_cache

if TYPE_CHECKING:
    from qdrant_client import QdrantClient

COLLECTION = "lychee_demo"
SPARSE_VECTOR = "bm25"
CAPTION_WIDTH = 40

FALLBACK_BANNER = """\
================================================================================
 NOTE: could not load {model!r}, so this demo is running with 'tiny'
 instead: a small UNTRAINED random model. Its scores come from random weights:
 the "reranked" column below shows the pipeline working, NOT real relevance.

 Why: {reason}

 To see real reranking, get Lychee-Rerank-MM (about 17 GB) where the hub is
 reachable and point the demo at the folder:
     hf download vec-ai/lychee-rerank-mm --local-dir ./lychee-rerank-mm
     lychee-rerank demo --model ./lychee-rerank-mm
 (a GPU with 24 GB of memory or more is advised; on a CPU it is very slow).
================================================================================"""

TINY_NOTE = """\
NOTE: --model tiny is a small random model: its scores exercise the code and mean nothing.
      For real relevance scores run: lychee-rerank demo --model vec-ai/lychee-rerank-mm (or a folder)."""


def demo_folder() -> Path:
    """Where the corpus and the Qdrant collection live: beside the ``tiny`` checkpoint in the cache.

    That is ``$LYCHEE_CACHE_DIR/demo``, or ``~/.cache/lychee-rerank/demo``.
    """
    return tiny_checkpoint_cache().parent / "demo"


@dataclass(frozen=True)
class Hit:
    """A first-stage result: the corpus item and its BM25 score."""

    item: CorpusItem
    bm25_score: float


@dataclass(frozen=True)
class RankedQuery:
    """One demo query with its first-stage hits and the reranker's score for each hit (same order)."""

    query: DemoQuery
    hits: list[Hit]
    rerank_scores: list[float]

    def reranked(self) -> list[tuple[int, Hit, float]]:
        """``(first-stage rank, hit, rerank score)``, best rerank score first; ties keep BM25 order."""
        ranked = [
            (rank, hit, score) for rank, (hit, score) in enumerate(zip(self.hits, self.rerank_scores, strict=True), 1)
        ]
        return sorted(ranked, key=lambda row: (-row[2], row[0]))


def open_index(folder: Path, items: Sequence[CorpusItem], bm25: BM25, *, rebuild: bool = False) -> QdrantClient:
    """The embedded Qdrant under ``folder/qdrant``, holding one point per corpus item.

    The collection is (re)built when asked, or when it does not hold this version of the corpus.
    """
    try:
        from qdrant_client import QdrantClient, models
    except ImportError:
        raise LycheeError(
            "the demo needs qdrant-client: pip install 'lychee-rerank[demo]' (or pip install qdrant-client)"
        ) from None
    try:
        client = QdrantClient(path=str(folder / "qdrant"))
    except RuntimeError as error:  # local mode locks its folder against a second process
        raise LycheeError(f"cannot open the demo's Qdrant folder {folder / 'qdrant'}: {error}") from None
    if rebuild or not _index_is_current(client, items):
        if client.collection_exists(COLLECTION):
            client.delete_collection(COLLECTION)
        client.create_collection(
            COLLECTION, vectors_config={}, sparse_vectors_config={SPARSE_VECTOR: models.SparseVectorParams()}
        )
        points = []
        for item in items:
            vector = bm25.document_vector(item.text)
            points.append(
                models.PointStruct(
                    id=item.id,
                    vector={SPARSE_VECTOR: models.SparseVector(indices=vector.indices, values=vector.values)},
                    payload={
                        "text": item.text,
                        "image_path": str(folder / "corpus" / "images" / item.image),
                        "kind": item.kind,
                        "corpus_version": CORPUS_VERSION,
                    },
                )
            )
        client.upsert(COLLECTION, points=points)
    return client


def _index_is_current(client: QdrantClient, items: Sequence[CorpusItem]) -> bool:
    # Same size, same corpus version and the same first caption: cheap checks that catch a collection
    # left by an older release or by an interrupted build (points are upserted in one call).
    if not client.collection_exists(COLLECTION) or client.count(COLLECTION, exact=True).count != len(items):
        return False
    points = client.retrieve(COLLECTION, ids=[items[0].id], with_payload=True)
    payload = (points[0].payload if points else None) or {}
    return payload.get("corpus_version") == CORPUS_VERSION and payload.get("text") == items[0].text


def first_stage(client: QdrantClient, bm25: BM25, items: Sequence[CorpusItem], text: str, top_k: int) -> list[Hit]:
    """The ``top_k`` items whose captions best match ``text`` by BM25, best first; ties by item id.

    Qdrant's local mode returns equal scores in no fixed order, so a few more hits than needed are
    fetched and ties are broken by id: the same query shows the same list on every run.
    """
    from qdrant_client import models

    vector = bm25.query_vector(text)
    if not vector.indices:  # no query word occurs in the corpus: nothing can match
        return []
    response = client.query_points(
        COLLECTION,
        query=models.SparseVector(indices=vector.indices, values=vector.values),
        using=SPARSE_VECTOR,
        limit=2 * top_k + 10,
        with_payload=False,
    )
    by_id = {item.id: item for item in items}
    hits = [Hit(by_id[int(point.id)], float(point.score)) for point in response.points]
    return sorted(hits, key=lambda hit: (-hit.bm25_score, hit.item.id))[:top_k]


def _is_hub_id(name: str) -> bool:
    # resolve_model_path returns a hub id unchanged and turns folders and "tiny" into folders; a bad
    # path raises there, which the caller lets through: a wrong folder is the user's error to fix.
    return name != TINY_MODEL_NAME and not Path(resolve_model_path(name)).is_dir()


def load_reranker(model: str | None, device: str | None, out: TextIO) -> LocalReranker:
    """The reranker for the demo; falls back to ``tiny`` (with a banner) when a hub model cannot be loaded.

    Only the demo falls back, and only for a hub id: a folder that is not a checkpoint, a missing
    CUDA device or a checkpoint that does not fit the profile is an error, as everywhere else.
    """
    name = model or os.environ.get("LYCHEE_MODEL") or LYCHEE.default_model
    choose_device(device)  # a wrong --device is an error of its own, never a reason to fall back
    if name == TINY_MODEL_NAME:
        print(TINY_NOTE, file=out)
        return LocalReranker(model=TINY_MODEL_NAME, device=device)
    if not _is_hub_id(name):
        return LocalReranker(model=name, device=device)
    try:
        return LocalReranker(model=name, device=device)
    except ModelLoadError as error:
        print(FALLBACK_BANNER.format(model=name, reason=_wrap(str(error), 72, " " * 6)), file=out)
        return LocalReranker(model=TINY_MODEL_NAME, device=device)


def _wrap(text: str, width: int, indent: str) -> str:
    return textwrap.fill(text, width=width, subsequent_indent=indent, break_long_words=False, break_on_hyphens=False)


def rerank_queries(
    reranker: LocalReranker, folder: Path, ranked: list[tuple[DemoQuery, list[Hit]]], *, chunk: int = 4
) -> list[RankedQuery]:
    """Scores every hit of every query with ``reranker``, with a progress bar over the pairs.

    Hits are scored ``chunk`` at a time so that the bar moves; scores do not depend on how documents
    are batched (the engine guarantees it), so the chunk size only changes how often the bar updates.
    """
    images = folder / "corpus" / "images"
    results = []
    total = sum(len(hits) for _, hits in ranked)
    with tqdm(total=total, desc="reranking", unit="pair", file=sys.stderr, leave=False) as bar:
        for query, hits in ranked:
            # A built-in query names a picture of the corpus folder; a --query-image is an absolute path,
            # which pathlib's "/" keeps as it is.
            query_input = Query(text=query.text, image=str(images / query.image) if query.image else None)
            documents = [Document(text=hit.item.text, image=str(images / hit.item.image)) for hit in hits]
            scores: list[float] = []
            for start in range(0, len(documents), chunk):
                part = documents[start : start + chunk]
                scores.extend(reranker.score(query_input, part, instruction=query.instruction))
                bar.update(len(part))
            results.append(RankedQuery(query, hits, scores))
    return results


def format_side_by_side(number: int, ranked: RankedQuery, model_name: str) -> str:
    """The query's header, then first-stage and reranked lists in two columns, row by row."""
    query = ranked.query
    instruction = resolve_instruction(query.instruction) or LYCHEE.default_instruction
    preset = f"{query.instruction}: " if query.instruction in INSTRUCTION_PRESETS else ""
    lines = [f"Query {number}: {query.text}" + (f"   + reference photo {query.image}" if query.image else "")]
    lines.append(f"Instruction: {preset}{instruction}")
    if not ranked.hits:
        lines.append("  (the first stage found nothing: no word of the query occurs in the corpus)")
        return "\n".join(lines)
    left = f"{'#':>2}  {'BM25':>6}  {cell('first stage: BM25 in Qdrant', CAPTION_WIDTH)}"
    right = f"{'#':>2}  {'score':>6}  {'was':>3}  {cell('reranked: ' + model_name, CAPTION_WIDTH)}"
    lines += [f"{left} │ {right}".rstrip(), f"{'─' * len(left)}─┼─{'─' * len(right)}"]
    for position, (hit, (was, new_hit, score)) in enumerate(zip(ranked.hits, ranked.reranked(), strict=True), start=1):
        left = f"{position:>2}  {hit.bm25_score:6.2f}  {cell(hit.item.text, CAPTION_WIDTH)}"
        right = f"{position:>2}  {score:6.4f}  {'#' + str(was):>3}  {cell(new_hit.item.text, CAPTION_WIDTH)}"
        lines.append(f"{left} │ {right}".rstrip())
    return "\n".join(lines)


def run_demo(args: argparse.Namespace, out: TextIO | None = None) -> int:
    """Builds (or opens) the corpus and its index, runs the queries, reranks and prints the tables to ``out``
    (default: standard output, looked up at call time so that redirections apply)."""
    out = out or sys.stdout
    if args.top_k < 1:
        raise LycheeError(f"--top-k must be at least 1, got {args.top_k}")
    if (args.query_image or args.instruction) and not args.query:
        # The built-in queries carry their own presets; a silently ignored flag would mislead.
        raise LycheeError("--query-image and --instruction go with --query TEXT (the first stage matches words)")
    if args.query_image and not Path(args.query_image).is_file():
        raise LycheeError(f"--query-image {args.query_image!r} is not a file")
    folder = demo_folder()
    corpus_folder = folder / "corpus"
    with tqdm(
        total=len(corpus_items()), desc="drawing the demo corpus", unit="image", file=sys.stderr, leave=False
    ) as bar:
        items = ensure_corpus(corpus_folder, rebuild=args.rebuild, progress=bar.update)
    bm25 = BM25.fit(item.text for item in items)
    reranker = load_reranker(args.model, args.device, out)
    if args.query:
        image = str(Path(args.query_image).resolve()) if args.query_image else None
        queries = [DemoQuery(args.query, image=image, instruction=args.instruction)]
    else:
        queries = DEMO_QUERIES
    client = open_index(folder, items, bm25, rebuild=args.rebuild)
    try:
        ranked = [(query, first_stage(client, bm25, items, query.text, args.top_k)) for query in queries]
    finally:
        client.close()  # release the folder lock at once, so the next run can open it
    results = rerank_queries(reranker, folder, ranked)

    model_name = reranker.model_name if reranker.model_name == TINY_MODEL_NAME else Path(reranker.model_name).name
    products = sum(item.kind == "product" for item in items)
    print(
        f"corpus: {len(items)} items ({products} product photos, {len(items) - products} figures) in {folder}\n"
        f"first stage: BM25 sparse vectors in embedded Qdrant, top {args.top_k}; "
        f"reranker: {reranker.model_name} on {reranker.loaded.device}",
        file=out,
    )
    for number, ranked_query in enumerate(results, start=1):
        print(file=out)
        print(format_side_by_side(number, ranked_query, model_name), file=out)
    if reranker.model_name == TINY_MODEL_NAME:
        print(
            "\n(reranked scores above come from the untrained 'tiny' model: they show the pipeline, not relevance)",
            file=out,
        )
    return 0
