"""Computed tokens per CPU second: the engine's prefix-cached batches of 1-8 rows against plain forwards.

Run from the repository root (the ``small`` checkpoint is the one ``bench_engine.py`` writes):

    .venv/bin/python benchmarks/bench_rows_per_batch.py --dtype bfloat16
    .venv/bin/python benchmarks/bench_rows_per_batch.py --dtype float32

Eight random token rows of 179-200 tokens follow an 80-token shared prefix. "Plain" runs each whole
prompt (prefix included) alone through the language model, as the naive reference does; the engine runs
the prefix once and the rows in batches of 1, 2, 4 or 8 over its key/value cache, with padding and its
mask. Each figure is the best of four rounds of ``time.process_time`` with one torch thread, which
other processes on a shared machine disturb far less than the wall clock.
"""

from __future__ import annotations

import argparse
import importlib.util
import sys
import time
from collections.abc import Callable
from pathlib import Path

import torch

from lychee_rerank.core.local import LocalReranker
from lychee_rerank.core.local.engine import _Prefix


def _checkpoint(shape: str) -> Path:
    spec = importlib.util.spec_from_file_location("bench_engine", Path(__file__).with_name("bench_engine.py"))
    if spec is None or spec.loader is None:
        raise SystemExit("benchmarks/bench_engine.py is missing")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return Path(module.checkpoint_folder(shape))


def _best(run: Callable[[], object], rounds: int = 4) -> float:
    with torch.inference_mode():
        run()
        best = float("inf")
        for _ in range(rounds):
            start = time.process_time()
            run()
            best = min(best, time.process_time() - start)
    return best


def main(argv: list[str] | None = None) -> int:
    """Prints plain forwards' tokens/s and the engine's at each batch size."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dtype", default="bfloat16")
    parser.add_argument("--shape", default="small")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    reranker = LocalReranker(model=str(_checkpoint(args.shape)), device="cpu", dtype=args.dtype)
    engine, language_model = reranker.engine, reranker.loaded.model.model.language_model
    generator = torch.Generator().manual_seed(0)
    vocabulary = min(700, reranker.loaded.model.config.text_config.vocab_size - 100)
    prefix_ids = torch.randint(20, vocabulary, (80,), generator=generator).tolist()
    rows = [torch.randint(20, vocabulary, (200 - 3 * i,), generator=generator).tolist() for i in range(8)]
    with torch.inference_mode():
        output = engine._forward([prefix_ids], [[]], {}, prefix=None, use_cache=True)
    prefix = _Prefix(prefix_ids, [], [(layer.keys, layer.values) for layer in output.cache.layers])

    def plain() -> None:
        for row in rows:
            language_model(input_ids=torch.tensor([prefix_ids + row]), use_cache=False)

    def batched(size: int) -> Callable[[], None]:
        def run() -> None:
            for start in range(0, len(rows), size):
                chunk = rows[start : start + size]
                engine._forward(chunk, [[] for _ in chunk], {}, prefix=prefix, use_cache=False)

        return run

    own = sum(len(row) for row in rows)
    whole = own + len(prefix_ids) * len(rows)
    plain_seconds = _best(plain)
    print(f"{args.dtype}: plain one-pair forwards {whole / plain_seconds:,.0f} tokens/s ({plain_seconds:.2f} s)")
    for size in (1, 2, 4, 8):
        seconds = _best(batched(size))
        print(
            f"  {size} rows a batch: {own / seconds:,.0f} computed tokens/s, "
            f"{own / seconds / (whole / plain_seconds):.2f}× plain per token; the rows in {seconds:.2f} s, "
            f"{plain_seconds / seconds:.2f}× faster than plain"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
