"""Computed tokens per CPU second: the engine's prefix-cached batches of 1-8 rows against plain forwards.

Run from the repository root (the ``small`` checkpoint is the one ``bench_engine.py`` writes):

    .venv/bin/python benchmarks/bench_rows_per_batch.py --dtype bfloat16
    .venv/bin/python benchmarks/bench_rows_per_batch.py --dtype float32

Eight random token rows of 179-200 tokens follow an 80-token shared prefix. "Plain" runs each whole
prompt (prefix included) alone through the language model, as the naive reference does; the engine runs
the prefix once and the rows in batches of 1, 2, 4 or 8 over its key/value cache, with padding and its
mask. Each figure is the best of four rounds of ``time.process_time`` with one torch thread, which
other processes on a shared machine disturb far less than the wall clock.

In bf16 on a CPU with bf16 kernels it compares two configurations in the same run, round after round:
"packed" (the linear layers' weights reordered for oneDNN once at load time, as ``load_model`` does
there) and "unpacked" (as loaded), each against its own plain forwards.
"""

from __future__ import annotations

import argparse
import importlib.util
import sys
import time
from collections.abc import Callable
from pathlib import Path

import torch

from lychee_rerank.core.local.engine import ScoringEngine, _Prefix
from lychee_rerank.core.local.loading import load_model
from lychee_rerank.core.local.packing import packing_applies
from lychee_rerank.core.profiles import DEFAULT_PROFILE, get_profile


def _checkpoint(shape: str) -> Path:
    spec = importlib.util.spec_from_file_location("bench_engine", Path(__file__).with_name("bench_engine.py"))
    if spec is None or spec.loader is None:
        raise SystemExit("benchmarks/bench_engine.py is missing")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return Path(module.checkpoint_folder(shape))


def _engine(folder: Path, dtype: str, pack_weights: bool) -> ScoringEngine:
    profile = get_profile(DEFAULT_PROFILE)
    loaded = load_model(str(folder), profile, device="cpu", dtype=dtype, pack_weights=pack_weights)
    return ScoringEngine(loaded, profile)


def main(argv: list[str] | None = None) -> int:
    """Prints plain forwards' tokens/s and the engine's at each batch size, per configuration."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dtype", default="bfloat16")
    parser.add_argument("--shape", default="small")
    parser.add_argument("--rounds", type=int, default=4, help="rounds over every configuration, best kept (4)")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    folder = _checkpoint(args.shape)
    engines = {"as loaded": _engine(folder, args.dtype, pack_weights=True)}
    if packing_applies(torch.device("cpu"), getattr(torch, args.dtype)):
        engines = {"packed": engines["as loaded"], "unpacked": _engine(folder, args.dtype, pack_weights=False)}
    config = next(iter(engines.values())).loaded.model.config.text_config
    generator = torch.Generator().manual_seed(0)
    vocabulary = min(700, config.vocab_size - 100)
    prefix_ids = torch.randint(20, vocabulary, (80,), generator=generator).tolist()
    rows = [torch.randint(20, vocabulary, (200 - 3 * i,), generator=generator).tolist() for i in range(8)]
    sizes = (1, 2, 4, 8)

    def runs(engine: ScoringEngine) -> dict[str, Callable[[], object]]:
        language_model = engine.loaded.model.model.language_model
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

        return {"plain": plain, **{str(size): batched(size) for size in sizes}}

    best: dict[tuple[str, str], float] = {}
    with torch.inference_mode():
        work = {name: runs(engine) for name, engine in engines.items()}
        for calls in work.values():  # warm-up
            for call in calls.values():
                call()
        # Round after round over every configuration, so that a burst of load from others hits all of them.
        for _ in range(args.rounds):
            for name, calls in work.items():
                for key, call in calls.items():
                    start = time.process_time()
                    call()
                    seconds = time.process_time() - start
                    best[(name, key)] = min(best.get((name, key), float("inf")), seconds)

    own = sum(len(row) for row in rows)
    whole = own + len(prefix_ids) * len(rows)
    print(
        f"{args.dtype}, {args.shape}: {len(rows)} rows of {len(rows[-1])}-{len(rows[0])} tokens after a "
        f"{len(prefix_ids)}-token prefix; CPU time, 1 thread, best of {args.rounds}\n"
    )
    print("| rows per batch | " + " | ".join(f"{name}: per token vs plain (request)" for name in engines) + " |")
    print("| --- |" + " --- |" * len(engines))
    print(
        "| plain one-pair | " + " | ".join(f"{whole / best[(name, 'plain')]:,.0f} tokens/s" for name in engines) + " |"
    )
    for size in sizes:
        cells = []
        for name in engines:
            plain_seconds, seconds = best[(name, "plain")], best[(name, str(size))]
            cells.append(f"{own / seconds / (whole / plain_seconds):.2f}× ({plain_seconds / seconds:.2f}×)")
        print(f"| {size} | " + " | ".join(cells) + " |")
    if len(engines) == 2:
        gains = [best[("unpacked", key)] / best[("packed", key)] for key in ("plain", *map(str, sizes))]
        print(
            f"\nreordered weights: plain forwards {gains[0]:.2f}× faster, engine batches "
            f"{min(gains[1:]):.2f}-{max(gains[1:]):.2f}× faster"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
