"""Industrial inspection: a photo of a suspect part as the query, against a library of annotated defects.

An inspector photographs a bearing ring that failed a visual check and wants the closest annotated
defects from the quality library, to classify the fault and find how it was handled before. The query
is the photo alone (add --query-text for a note); library entries are an image plus its annotation.
The inspection instruction preset says what counts as a match: the same kind of defect.

Run it (offline, with a model folder; the default is the hub id):

    python examples/industrial_inspection.py --model ./lychee-rerank-mm
    python examples/industrial_inspection.py --model tiny      # an untrained model: exercises the code only
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path

from lychee_rerank.core.extras import exit_unless_installed

# Before the imports below, so a missing framework is one line naming its extra, not a traceback.
exit_unless_installed("examples/industrial_inspection.py", {"torch": "local", "transformers": "local"})

from lychee_rerank.adapters.demo.drawing import DEFECT_KINDS, draw_part
from lychee_rerank.adapters.demo.table import ranking_table
from lychee_rerank.core import Document, LocalReranker, LycheeError, Query
from lychee_rerank.core.profiles import INSTRUCTION_PRESETS, LYCHEE

ANNOTATIONS = {
    "scratch": "Linear scratch on the raceway from handling; class: scratch; action: polish and re-inspect",
    "crack": "Radial hairline crack from the outer edge; class: crack; action: scrap, check heat treatment",
    "dent": "Round dent with a raised rim, impact damage; class: dent; action: scrap",
    "corrosion": "Orange-brown pitting corrosion patch; class: corrosion; action: clean, check storage humidity",
    "porosity": "Cluster of small dark pores in the surface; class: porosity; action: scrap, check casting",
    "none": "Reference image of a good part, no visible defect; class: OK",
}


def main(argv: Sequence[str] | None = None) -> int:
    """Ranks the defect library against the suspect part's photo, and prints the table."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default=LYCHEE.default_model, help="hub id, checkpoint folder, or 'tiny'")
    parser.add_argument("--device", help="cuda, cpu... (default: cuda when available)")
    parser.add_argument("--suspect", default="crack", choices=DEFECT_KINDS, help="the defect the photo shows")
    parser.add_argument("--query-text", help="an optional note from the inspector")
    args = parser.parse_args(argv)

    try:
        reranker = LocalReranker(model=args.model, device=args.device)
    except LycheeError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    with tempfile.TemporaryDirectory(prefix="lychee-inspection-") as folder:
        library, documents = [], []
        for defect in DEFECT_KINDS:
            for seed in (1, 2):  # two annotated examples per class, as a real library would hold
                image = Path(folder) / f"{defect}-{seed}.png"
                draw_part(defect, seed=seed).save(image)
                library.append(f"{defect}-{seed}")
                documents.append(Document(text=ANNOTATIONS[defect], image=str(image)))
        photo = Path(folder) / "suspect.png"
        draw_part(args.suspect, seed=42).save(photo)  # a part the library has never seen
        results = reranker.rerank(Query(text=args.query_text, image=str(photo)), documents, instruction="inspection")

    print(f"model: {reranker.model_name}")
    print(
        f"query: photo of a suspect part (drawn with a {args.suspect!r} defect)"
        + (f" + note {args.query_text!r}" if args.query_text else "")
    )
    print(f"instruction (inspection preset): {INSTRUCTION_PRESETS['inspection']}")
    print()
    print(ranking_table([(r.score, library[r.index], r.document.text or "") for r in results], text_width=80))
    return 0


if __name__ == "__main__":
    sys.exit(main())
