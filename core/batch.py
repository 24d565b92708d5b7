"""``lychee-rerank batch``: rerank stored candidate lists, one JSON line in, one JSON line out.

Each input row is ``{"id", "query", "documents", "instruction"?}`` with the query and documents as the
service takes them (strings, or ``{"text", "image"}`` objects); each output row is
``{"id", "results": [{"index", "score"}, ...]}``, best first, or ``{"id", "error"}`` for a row that could
not be scored (the run goes on). Output rows are appended and flushed one by one, so a run that stops can
be started again with the same command: rows whose id is already in the output are skipped, and a last line
cut off mid-write is removed first.

Where the scoring happens:

- in this process (``--model``: a :class:`~lychee_rerank.core.local.LocalReranker`);
- on a running service (``--url``: a :class:`~lychee_rerank.core.RemoteReranker`, with its retries);
- on a Ray cluster (``--ray``): Ray Data's ``map_batches`` over a pool of actors, one model each (one GPU
  each when there are GPUs). Rows come back in whatever order the actors finish them.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TextIO

from lychee_rerank.core.errors import InvalidInputError, LycheeError
from lychee_rerank.core.interface import Reranker

RowId = str | int

DESCRIPTION = """\
Reranks stored candidate lists. Each line of INPUT is {"id", "query", "documents", "instruction"?}, with the
query and documents as the service takes them (strings, or {"text", "image"} objects); each line written to
OUTPUT is {"id", "results": [{"index", "score"}, ...]}, best first, or {"id", "error"} for a row that could
not be scored (the run goes on).

Rows are appended one by one: run the same command again after a stop and the ids already in OUTPUT are
skipped (a last line cut off mid-write is removed first). Score here (--model), on a running service
(--url), or over a Ray cluster (--ray: Ray Data, one model per actor).
"""


@dataclass(frozen=True)
class InputRow:
    """One line of the input: its id and the parsed object, or why it could not be read."""

    id: RowId
    row: Mapping[str, Any] | None
    error: str | None = None


def read_rows(path: str | os.PathLike[str]) -> Iterator[InputRow]:
    """The input's rows in order; blank lines are skipped, unreadable ones come back with an error.

    A row without a usable id gets the id ``"line N"`` so that its error can still be written and found.
    """
    with open(path, encoding="utf-8") as source:
        for number, line in enumerate(source, start=1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as error:
                yield InputRow(f"line {number}", None, f"line {number} is not JSON: {error.msg}")
                continue
            if not isinstance(row, dict):
                yield InputRow(f"line {number}", None, f"line {number} is not a JSON object")
                continue
            row_id = row.get("id")
            if isinstance(row_id, bool) or not isinstance(row_id, (str, int)):
                yield InputRow(f"line {number}", None, f"line {number}: 'id' must be a string or an integer")
                continue
            yield InputRow(row_id, row)


def repair_and_read_done(path: str | os.PathLike[str]) -> set[RowId]:
    """Ids already written to ``path``; a last line cut off mid-write is removed from the file first.

    Raises:
        LycheeError: A line other than the last is not a JSON object with an id (not an output of this
            command: refuse rather than append to it).
    """
    target = Path(path)
    if not target.exists():
        return set()
    data = target.read_bytes()
    if data and not data.endswith(b"\n"):
        cut = data.rfind(b"\n") + 1
        with open(target, "r+b") as output:
            output.truncate(cut)
        data = data[:cut]
    done: set[RowId] = set()
    for number, line in enumerate(data.decode("utf-8").splitlines(), start=1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
            done.add(row["id"])
        except (json.JSONDecodeError, KeyError, TypeError):
            raise LycheeError(
                f"{target}, line {number}: not a row of `lychee-rerank batch` output; give another OUTPUT"
            ) from None
    return done


def score_row(reranker: Reranker, row: Mapping[str, Any]) -> dict[str, Any]:
    """The output row for one input row: ranked results, or what is wrong with the row.

    Only the row's own faults become an ``error`` row. A reranker that fails (a service down after its
    retries, a model that cannot load) raises: the run stops and can be resumed, instead of marking
    every remaining row as failed.
    """
    row_id = row.get("id")
    try:
        query, documents, instruction = _parse(row)
        results = reranker.rerank(query, documents, instruction=instruction)
    except (InvalidInputError, TypeError) as error:
        return {"id": row_id, "error": str(error)}
    return {"id": row_id, "results": [{"index": result.index, "score": result.score} for result in results]}


def _parse(row: Mapping[str, Any]) -> tuple[Any, list[Any], str | None]:
    if "query" not in row:
        raise InvalidInputError("the row has no 'query'")
    documents = row.get("documents")
    if not isinstance(documents, list) or not documents:
        raise InvalidInputError("'documents' must be a non-empty list of strings or {text, image} objects")
    instruction = row.get("instruction")
    if instruction is not None and not isinstance(instruction, str):
        raise InvalidInputError("'instruction' must be a string")
    return row["query"], documents, instruction


class Progress:
    """A one-line progress display on a terminal stream: rows done of total, rows/s and the time left.

    The client install has no tqdm, so this is the small piece of it that a batch run needs.
    """

    def __init__(self, total: int, stream: TextIO | None = None, *, unit: str = "rows", every_s: float = 0.5) -> None:
        self.total = total
        self.unit = unit
        self.done = 0
        self.stream = stream if stream is not None else sys.stderr
        self.every_s = every_s
        self.started = time.monotonic()
        self._last = 0.0

    def update(self, count: int = 1) -> None:
        """Counts ``count`` more rows; redraws at most every ``every_s`` seconds."""
        self.done += count
        now = time.monotonic()
        if now - self._last >= self.every_s or self.done >= self.total:
            self._last = now
            self.stream.write("\r" + self.line(now).ljust(48))
            self.stream.flush()

    def line(self, now: float | None = None) -> str:
        """``12/100 rows  3.4 rows/s  ETA 0:00:26``."""
        elapsed = max((now if now is not None else time.monotonic()) - self.started, 1e-9)
        rate = self.done / elapsed
        left = (self.total - self.done) / rate if rate > 0 else float("inf")
        eta = _clock(left) if left != float("inf") else "?"
        return f"{self.done}/{self.total} {self.unit}  {rate:.1f} {self.unit}/s  ETA {eta}"

    def close(self) -> None:
        """Ends the line."""
        self.stream.write("\n")
        self.stream.flush()


def _clock(seconds: float) -> str:
    whole = int(seconds + 0.5)
    return f"{whole // 3600}:{whole // 60 % 60:02d}:{whole % 60:02d}"


@dataclass
class BatchSummary:
    """What a run did."""

    written: int = 0
    errors: int = 0
    skipped: int = 0


def _pending(input_path: str | os.PathLike[str], done: set[RowId]) -> tuple[list[InputRow], int]:
    pending, skipped, seen = [], 0, set(done)
    for row in read_rows(input_path):
        if row.id in seen:
            skipped += 1
            continue
        seen.add(row.id)  # a repeated id is scored once
        pending.append(row)
    return pending, skipped


def _write_all(
    rows: Iterable[dict[str, Any]],
    output_path: str | os.PathLike[str],
    summary: BatchSummary,
    progress: Progress | None,
) -> None:
    with open(output_path, "a", encoding="utf-8") as output:
        for row in rows:
            output.write(json.dumps(row, ensure_ascii=False) + "\n")
            output.flush()
            summary.written += 1
            summary.errors += "error" in row
            if progress is not None:
                progress.update()


def run_batch(
    input_path: str | os.PathLike[str],
    output_path: str | os.PathLike[str],
    reranker: Reranker,
    *,
    progress: bool = True,
) -> BatchSummary:
    """Scores every input row not yet in the output with ``reranker`` (local or remote), appending as it goes.

    Example:
        >>> run_batch("rows.jsonl", "ranked.jsonl", LocalReranker(model="tiny"))  # doctest: +SKIP
        BatchSummary(written=1000, errors=2, skipped=0)
    """
    pending, skipped = _pending(input_path, repair_and_read_done(output_path))
    summary = BatchSummary(skipped=skipped)
    bar = Progress(len(pending)) if progress else None

    def outputs() -> Iterator[dict[str, Any]]:
        for item in pending:
            if item.row is None:
                yield {"id": item.id, "error": item.error}
            else:
                yield score_row(reranker, item.row)

    _write_all(outputs(), output_path, summary, bar)
    if bar is not None:
        bar.close()
    return summary


class _RayScorer:
    """One Ray Data actor: loads the model once, then scores batches of rows (each row's JSON as text)."""

    def __init__(self, model: str | None, device: str | None, dtype: str | None, profile: str) -> None:
        from lychee_rerank.core.local import LocalReranker

        self.reranker = LocalReranker(model=model, device=device, dtype=dtype, profile=profile)

    def __call__(self, batch: dict[str, Any]) -> dict[str, Any]:
        rows = [score_row(self.reranker, json.loads(text)) for text in batch["row"]]
        return {"out": [json.dumps(row, ensure_ascii=False) for row in rows]}


def run_batch_on_ray(
    input_path: str | os.PathLike[str],
    output_path: str | os.PathLike[str],
    *,
    model: str | None,
    device: str | None = None,
    dtype: str | None = None,
    profile: str = "lychee",
    address: str | None = None,
    actors: int = 1,
    gpus_per_actor: float | None = None,
    cpus_per_actor: float = 1.0,
    rows_per_batch: int = 8,
    progress: bool = True,
) -> BatchSummary:
    """Scores the pending rows on a Ray cluster: Ray Data ``map_batches`` over ``actors`` model-holding actors.

    Joins the running Ray (or ``address``), else starts a local one. Rows travel as JSON text so that
    documents of any shape pass through Ray Data's columnar blocks unchanged.

    Args:
        gpus_per_actor: GPUs per actor; ``None``: 1 when the cluster has GPUs and the device is not ``cpu``.
    """
    from lychee_rerank.core.extras import require

    ray = require("ray", "ray")
    require("ray.data", "ray")
    if not ray.is_initialized():
        ray.init(address=address)
    if gpus_per_actor is None:
        has_gpus = float(ray.cluster_resources().get("GPU", 0)) > 0
        gpus_per_actor = 1.0 if has_gpus and (device is None or device.startswith("cuda")) else 0.0

    pending, skipped = _pending(input_path, repair_and_read_done(output_path))
    summary = BatchSummary(skipped=skipped)
    unreadable = [{"id": item.id, "error": item.error} for item in pending if item.row is None]
    readable = [json.dumps(item.row, ensure_ascii=False) for item in pending if item.row is not None]
    bar = Progress(len(pending)) if progress else None
    _write_all(unreadable, output_path, summary, bar)
    if readable:
        dataset = ray.data.from_items([{"row": text} for text in readable]).map_batches(
            _RayScorer,
            fn_constructor_kwargs={"model": model, "device": device, "dtype": dtype, "profile": profile},
            batch_size=rows_per_batch,
            concurrency=actors,
            num_gpus=gpus_per_actor,
            num_cpus=cpus_per_actor,
        )
        scored = (json.loads(item["out"]) for item in dataset.iter_rows())
        _write_all(scored, output_path, summary, bar)
    if bar is not None:
        bar.close()
    return summary


def register(subparsers: Any) -> None:
    """Adds the ``batch`` command to ``lychee-rerank``."""
    parser = subparsers.add_parser(
        "batch",
        help="rerank stored candidate lists: JSON lines in, ranked JSON lines out (resumable)",
        description=DESCRIPTION,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("input", help="JSON lines: {id, query, documents, instruction?}")
    parser.add_argument("output", help="JSON lines {id, results: [{index, score}]} (appended; re-run to resume)")
    where = parser.add_mutually_exclusive_group()
    where.add_argument("--url", help="score on a running service instead of loading a model")
    where.add_argument("--ray", action="store_true", help="spread the rows over a Ray cluster (Ray Data)")
    parser.add_argument("--model", help="hub id, checkpoint folder, or 'tiny' (default: vec-ai/lychee-rerank-mm)")
    parser.add_argument("--profile", default="lychee")
    parser.add_argument("--device", help="cuda, cpu... (default: cuda when available)")
    parser.add_argument("--dtype", help="bfloat16, float32... (default per device)")
    parser.add_argument("--api-key", help="with --url (default: $LYCHEE_API_KEY)")
    parser.add_argument("--ray-address", help="with --ray: the cluster to join (default: $RAY_ADDRESS or a local one)")
    parser.add_argument("--actors", type=int, default=1, help="with --ray: model-holding actors (default 1)")
    parser.add_argument("--gpus-per-actor", type=float, help="with --ray (default: 1 when the cluster has GPUs)")
    parser.add_argument("--rows-per-batch", type=int, default=8, help="with --ray: rows per actor call (default 8)")
    parser.add_argument("--no-progress", dest="progress", action="store_false", help="no progress line")
    parser.set_defaults(handler=_batch_command)


def _batch_command(args: argparse.Namespace) -> int:
    if not Path(args.input).is_file():
        raise LycheeError(f"the input {args.input!r} does not exist; give a JSON lines file")
    if os.path.abspath(args.input) == os.path.abspath(args.output):
        raise LycheeError("INPUT and OUTPUT are the same file; give another OUTPUT")
    if args.ray:
        summary = run_batch_on_ray(
            args.input,
            args.output,
            model=args.model,
            device=args.device,
            dtype=args.dtype,
            profile=args.profile,
            address=args.ray_address,
            actors=args.actors,
            gpus_per_actor=args.gpus_per_actor,
            rows_per_batch=args.rows_per_batch,
            progress=args.progress,
        )
    else:
        summary = run_batch(args.input, args.output, _reranker(args), progress=args.progress)
    print(
        f"{summary.written} rows written to {args.output} ({summary.errors} with an error), "
        f"{summary.skipped} already there",
        file=sys.stderr,
    )
    return 0


def _reranker(args: argparse.Namespace) -> Reranker:
    if args.url:
        from lychee_rerank.core.remote import RemoteReranker

        return RemoteReranker(args.url, api_key=args.api_key)
    from lychee_rerank.core.local import LocalReranker
    from lychee_rerank.core.profiles import TINY_MODEL_NAME

    if args.model == TINY_MODEL_NAME:
        print("NOTE: --model tiny is a small random model: its scores mean nothing.", file=sys.stderr)
    return LocalReranker(model=args.model, device=args.device, dtype=args.dtype, profile=args.profile)
