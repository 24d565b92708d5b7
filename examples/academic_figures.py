"""Academic figures: a question against chart images with their captions.

A reader asks which figure reports accuracy against training steps. The candidate figures are charts
(drawn here) with captions; some captions share the words without holding the answer (training loss
against steps, learning rate against steps). The academic instruction preset asks the model for the
figure that contains the quantitative result.

Run it (offline, with a model folder; the default is the hub id):

    python examples/academic_figures.py --model ./lychee-rerank-mm
    python examples/academic_figures.py --model tiny      # an untrained model: exercises the code only
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path

from lychee_rerank.core.extras import exit_unless_installed

# Before the imports below, so a missing framework is one line naming its extra, not a traceback.
exit_unless_installed("examples/academic_figures.py", {"torch": "local", "transformers": "local"})

from lychee_rerank.adapters.demo.drawing import draw_chart
from lychee_rerank.adapters.demo.table import ranking_table
from lychee_rerank.core import Document, LocalReranker, LycheeError
from lychee_rerank.core.profiles import INSTRUCTION_PRESETS, LYCHEE

# (figure id, chart kind, title, x label, y label, rising, caption)
FIGURES = [
    ("fig1", "line", "Accuracy vs. training steps", "training steps", "accuracy", True,
     "Figure 1: top-1 accuracy of the three model sizes as training proceeds"),
    ("fig2", "line", "Training loss", "training steps", "loss", False,
     "Figure 2: training loss vs. steps, with and without warm-up"),
    ("fig3", "line", "Learning rate", "training steps", "learning rate", False,
     "Figure 3: learning rate schedule over training steps"),
    ("fig4", "scatter", "Accuracy vs. parameters", "parameters (B)", "accuracy", True,
     "Figure 4: final accuracy vs. number of parameters"),
    ("fig5", "bar", "Accuracy per dataset", "dataset", "accuracy", True,
     "Figure 5: accuracy per benchmark dataset"),
    ("fig6", "line", "Latency", "batch size", "latency (ms)", True,
     "Figure 6: inference latency vs. batch size"),
]  # fmt: skip


def main(argv: Sequence[str] | None = None) -> int:
    """Ranks the figures for the reader's question, and prints the table."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default=LYCHEE.default_model, help="hub id, checkpoint folder, or 'tiny'")
    parser.add_argument("--device", help="cuda, cpu... (default: cuda when available)")
    parser.add_argument("--query", default="How does accuracy change as the number of training steps grows?")
    args = parser.parse_args(argv)

    try:
        reranker = LocalReranker(model=args.model, device=args.device)
    except LycheeError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    with tempfile.TemporaryDirectory(prefix="lychee-figures-") as folder:
        documents = []
        for index, (name, kind, title, x_label, y_label, rising, caption) in enumerate(FIGURES):
            chart = Path(folder) / f"{name}.png"
            draw_chart(kind, title, x_label, y_label, seed=index, rising=rising).save(chart)
            documents.append(Document(text=caption, image=str(chart)))
        results = reranker.rerank(args.query, documents, instruction="academic")

    print(f"model: {reranker.model_name}")
    print(f"question: {args.query!r}")
    print(f"instruction (academic preset): {INSTRUCTION_PRESETS['academic']}")
    print()
    print(ranking_table([(r.score, FIGURES[r.index][0], r.document.text or "") for r in results]))
    return 0


if __name__ == "__main__":
    sys.exit(main())
