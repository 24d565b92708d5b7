"""A retrieval test collection in the BEIR layout, and first-stage run files in TREC format.

The layout (as BEIR and MTEB ship their data sets)::

    DATASET/corpus.jsonl      {"_id", "title"?, "text"?, "image"?} per line
    DATASET/queries.jsonl     {"_id", "text"?, "image"?} per line
    DATASET/qrels/test.tsv    query-id <TAB> corpus-id <TAB> score, after a header line

``image`` (an extension of BEIR's format for multimodal collections) is a path relative to the folder, an
http(s) URL or a data URI. A run file has one line per retrieved document:
``query-id Q0 doc-id rank score tag``.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from lychee_rerank.core.errors import LycheeError
from lychee_rerank.core.sources import source_kind

Qrels = dict[str, dict[str, int]]
"""query id -> document id -> graded relevance."""

Run = dict[str, dict[str, float]]
"""query id -> document id -> score (higher is better)."""

SAMPLE_NAME = "sample"
"""The name that means the small multimodal collection shipped with the package."""


@dataclass(frozen=True)
class BeirDataset:
    """A loaded collection. Queries and documents are ``{"text"?, "image"?}`` mappings, as the API takes them.

    Attributes:
        name: The folder's name.
        corpus: Document id -> ``{"text"?, "image"?}``; ``title`` and ``text`` are joined into ``text``.
        queries: Query id -> ``{"text"?, "image"?}``, only the queries that have judgements.
        qrels: The relevance judgements of the split.
    """

    name: str
    corpus: dict[str, dict[str, str]]
    queries: dict[str, dict[str, str]]
    qrels: Qrels


def sample_dataset() -> Path:
    """The folder of the small multimodal sample collection shipped with the package (generated pictures)."""
    return Path(__file__).resolve().parent / "sample"


def _read_jsonl(path: Path) -> list[dict[str, Any]]:
    if not path.is_file():
        raise LycheeError(f"{path} is missing; a BEIR-layout folder holds corpus.jsonl, queries.jsonl, qrels/")
    rows = []
    with open(path, encoding="utf-8") as source:
        for number, line in enumerate(source, start=1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as error:
                raise LycheeError(f"{path}, line {number}: not JSON ({error.msg})") from None
            if not isinstance(row, dict) or "_id" not in row:
                raise LycheeError(f"{path}, line {number}: expected an object with '_id'")
            rows.append(row)
    return rows


def _content(row: Mapping[str, Any], folder: Path, where: str) -> dict[str, str]:
    text = " ".join(str(row[key]).strip() for key in ("title", "text") if row.get(key))
    content: dict[str, str] = {"text": text} if text else {}
    image = row.get("image")
    if image:
        image = str(image)
        # Relative paths are the folder's own files; URLs and data URIs are read as they are.
        content["image"] = image if source_kind(image) != "bare" else str(folder / image)
    if not content:
        raise LycheeError(f"{where} {row['_id']!r} has neither text nor an image")
    return content


def read_qrels(path: str | os.PathLike[str]) -> Qrels:
    """A BEIR qrels TSV (``query-id corpus-id score``, a header line) or a TREC qrels file (4 columns)."""
    qrels: Qrels = {}
    with open(path, encoding="utf-8") as source:
        for number, line in enumerate(source, start=1):
            parts = line.split()
            if not parts or (number == 1 and not parts[-1].lstrip("-").isdigit()):
                continue  # blank, or the header
            if len(parts) not in (3, 4):
                raise LycheeError(f"{path}, line {number}: expected 'query-id corpus-id score'")
            query_id, doc_id, grade = (parts[0], parts[1], parts[2]) if len(parts) == 3 else (parts[0], *parts[2:])
            try:
                qrels.setdefault(query_id, {})[doc_id] = int(grade)
            except ValueError:
                raise LycheeError(f"{path}, line {number}: the score {grade!r} is not an integer") from None
    return qrels


def load_beir(folder: str | os.PathLike[str], split: str = "test") -> BeirDataset:
    """Reads a BEIR-layout folder (``sample`` means :func:`sample_dataset`).

    Raises:
        LycheeError: A file is missing or malformed, saying which and where.
    """
    root = sample_dataset() if os.fspath(folder) == SAMPLE_NAME else Path(folder)
    if not root.is_dir():
        raise LycheeError(f"{root} is not a folder; give a BEIR-layout folder or 'sample'")
    qrels_path = root / "qrels" / f"{split}.tsv"
    if not qrels_path.is_file():
        raise LycheeError(f"{qrels_path} is missing; give the split with --split (its qrels/<split>.tsv)")
    qrels = read_qrels(qrels_path)
    corpus = {str(row["_id"]): _content(row, root, "document") for row in _read_jsonl(root / "corpus.jsonl")}
    queries = {
        str(row["_id"]): _content(row, root, "query")
        for row in _read_jsonl(root / "queries.jsonl")
        if str(row["_id"]) in qrels
    }
    missing = sorted(set(qrels) - set(queries))
    if missing:
        raise LycheeError(f"qrels name queries that queries.jsonl lacks: {missing[:5]}")
    return BeirDataset(root.name, corpus, queries, qrels)


def read_trec_run(path: str | os.PathLike[str]) -> Run:
    """A TREC run file: ``query-id Q0 doc-id rank score tag`` per line."""
    run: Run = {}
    with open(path, encoding="utf-8") as source:
        for number, line in enumerate(source, start=1):
            parts = line.split()
            if not parts:
                continue
            if len(parts) != 6:
                raise LycheeError(f"{path}, line {number}: expected 'query-id Q0 doc-id rank score tag'")
            try:
                run.setdefault(parts[0], {})[parts[2]] = float(parts[4])
            except ValueError:
                raise LycheeError(f"{path}, line {number}: the score {parts[4]!r} is not a number") from None
    return run


def ranked(scores: Mapping[str, float]) -> list[str]:
    """Document ids best first; equal scores by id, so that a run reads the same everywhere."""
    return sorted(scores, key=lambda doc_id: (-scores[doc_id], doc_id))


def write_trec_run(path: str | os.PathLike[str], run: Run, tag: str) -> None:
    """Writes ``run`` in TREC format, each query's documents best first."""
    with open(path, "w", encoding="utf-8") as output:
        for query_id in sorted(run):
            for rank, doc_id in enumerate(ranked(run[query_id]), start=1):
                output.write(f"{query_id} Q0 {doc_id} {rank} {run[query_id][doc_id]:.6f} {tag}\n")
