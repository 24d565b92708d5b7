"""``lychee-rerank eval DATASET --model M``: first stage against first stage + reranking, on your judgements.

DATASET is a BEIR-layout folder (``corpus.jsonl``, ``queries.jsonl``, ``qrels/test.tsv``; see
:mod:`lychee_rerank.core.evaluation.dataset`), or ``sample`` for the small multimodal collection shipped
with the package. The first stage is a TREC run file (``--run``) or BM25 computed here. Prints NDCG@10,
MRR@10, Recall@10 and Recall@100 before and after reranking the top ``--top-k``, then the queries that
reranking helped and hurt most; writes the reranked run, and with ``--json`` the metrics.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from lychee_rerank.core.errors import LycheeError

DESCRIPTION = """\
Measures reranking on your judgements: first stage against first stage + reranking. DATASET is a folder in
the BEIR layout (corpus.jsonl, queries.jsonl, qrels/test.tsv; an "image" field may be a path relative to the
folder, a URL or a data URI), or 'sample' for the small multimodal collection shipped with the package.
The first stage is a TREC run file (--run) or BM25 computed here. Prints NDCG@10, MRR@10, Recall@10 and
Recall@100 before and after reranking the top --top-k, then the queries reranking helped and hurt most;
writes the reranked run (--output) and, with --json, the metrics.
"""

_LABELS = {"ndcg@10": "NDCG@10", "mrr@10": "MRR@10", "recall@10": "Recall@10", "recall@100": "Recall@100"}


def register(subparsers: Any) -> None:
    """Adds the ``eval`` command to ``lychee-rerank``."""
    parser = subparsers.add_parser(
        "eval",
        help="measure reranking on a BEIR-layout collection: NDCG@10, MRR@10, Recall@10/100",
        description=DESCRIPTION,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("dataset", help="a BEIR-layout folder, or 'sample' (shipped, multimodal, tiny)")
    first = parser.add_mutually_exclusive_group()
    first.add_argument("--run", help="first-stage run file, TREC format (query-id Q0 doc-id rank score tag)")
    first.add_argument("--first-stage", choices=("bm25",), help="compute the first stage here (default: bm25)")
    parser.add_argument("--top-k", type=int, default=100, help="documents reranked per query (default 100)")
    parser.add_argument("--split", default="test", help="qrels/<split>.tsv (default test)")
    parser.add_argument("--instruction", help="the task instruction, or a preset name (ecommerce, web...)")
    where = parser.add_mutually_exclusive_group()
    where.add_argument("--model", help="hub id, checkpoint folder, or 'tiny' (default: vec-ai/lychee-rerank-mm)")
    where.add_argument("--url", help="rerank on a running service instead of loading a model")
    parser.add_argument("--api-key", help="with --url (default: $LYCHEE_API_KEY)")
    parser.add_argument("--profile", default="lychee")
    parser.add_argument("--device", help="cuda, cpu... (default: cuda when available)")
    parser.add_argument("--dtype", help="bfloat16, float32... (default per device)")
    parser.add_argument("--output", help="reranked run file (default: ./<dataset>.reranked.trec)")
    parser.add_argument("--json", dest="json_path", help="write the metrics as JSON to this path")
    parser.add_argument("--show", type=int, default=5, help="queries shown among the wins and the losses (default 5)")
    parser.add_argument("--no-progress", dest="progress", action="store_false", help="no progress line")
    parser.set_defaults(handler=_eval_command)


def _reranker(args: argparse.Namespace) -> Any:
    if args.url:
        from lychee_rerank.core.remote import RemoteReranker

        return RemoteReranker(args.url, api_key=args.api_key)
    from lychee_rerank.core.local import LocalReranker
    from lychee_rerank.core.profiles import TINY_MODEL_NAME

    if args.model == TINY_MODEL_NAME:
        print("NOTE: --model tiny is a small random model: its scores mean nothing.", file=sys.stderr)
    return LocalReranker(model=args.model, device=args.device, dtype=args.dtype, profile=args.profile)


def metrics_table(first_stage: dict[str, float], reranked: dict[str, float], *, first_name: str) -> str:
    """The metrics side by side, with the change reranking made."""
    lines = [f"{'metric':<12} {first_name:>12} {'reranked':>10} {'change':>8}"]
    for key, label in _LABELS.items():
        before, after = first_stage[key], reranked[key]
        lines.append(f"{label:<12} {before:>12.4f} {after:>10.4f} {after - before:>+8.4f}")
    return "\n".join(lines)


def wins_and_losses(
    before: dict[str, dict[str, float]],
    after: dict[str, dict[str, float]],
    queries: dict[str, dict[str, str]],
    show: int,
) -> str:
    """Per-query NDCG@10 changes: counts, then the largest gains and losses."""
    changes = {query_id: after[query_id]["ndcg@10"] - before[query_id]["ndcg@10"] for query_id in before}
    wins = sorted((q for q, change in changes.items() if change > 1e-9), key=lambda q: -changes[q])
    losses = sorted((q for q, change in changes.items() if change < -1e-9), key=lambda q: changes[q])
    ties = len(changes) - len(wins) - len(losses)
    lines = [f"per query NDCG@10: {len(wins)} better, {len(losses)} worse, {ties} unchanged"]
    for title, chosen in (("better", wins[:show]), ("worse", losses[:show])):
        for query_id in chosen:
            query = queries[query_id]
            text = (query.get("text") or "")[:50] + (" [image]" if query.get("image") else "")
            lines.append(
                f"  {title:<6} {query_id:<12} {before[query_id]['ndcg@10']:.3f} -> {after[query_id]['ndcg@10']:.3f}"
                f"  {text}"
            )
    return "\n".join(lines)


def _eval_command(args: argparse.Namespace) -> int:
    from lychee_rerank.core.evaluation.dataset import load_beir, read_trec_run, write_trec_run
    from lychee_rerank.core.evaluation.first_stage import bm25_run
    from lychee_rerank.core.evaluation.metrics import evaluate, per_query
    from lychee_rerank.core.evaluation.rerank import rerank_run

    if args.top_k < 1:
        raise LycheeError(f"--top-k must be at least 1, got {args.top_k}")
    dataset = load_beir(args.dataset, args.split)
    if args.run:
        if not Path(args.run).is_file():
            raise LycheeError(f"the run file {args.run!r} does not exist")
        first_stage, first_name = read_trec_run(args.run), "first stage"
    else:
        first_stage, first_name = bm25_run(dataset, depth=max(args.top_k, 100)), "BM25"
    print(
        f"{dataset.name}: {len(dataset.queries)} queries, {len(dataset.corpus)} documents; "
        f"reranking the top {args.top_k} of {first_name}",
        file=sys.stderr,
    )
    try:
        reranked = rerank_run(
            _reranker(args),
            dataset,
            first_stage,
            top_k=args.top_k,
            instruction=args.instruction,
            show_progress=args.progress,
        )
    except ValueError as error:
        raise LycheeError(str(error)) from None
    output = Path(args.output or f"{dataset.name}.reranked.trec")
    write_trec_run(output, reranked, tag="lychee-rerank")
    before, after = evaluate(dataset.qrels, first_stage), evaluate(dataset.qrels, reranked)
    print(metrics_table(before, after, first_name=first_name))
    print()
    print(
        wins_and_losses(
            per_query(dataset.qrels, first_stage), per_query(dataset.qrels, reranked), dataset.queries, args.show
        )
    )
    print(f"\nreranked run written to {output}", file=sys.stderr)
    if args.json_path:
        Path(args.json_path).write_text(json.dumps({"first_stage": before, "reranked": after}, indent=2) + "\n")
    return 0
