"""E-commerce search: a text query plus a reference photo, against product photos and descriptions.

A shopper types "white linen shirt for summer" and uploads a photo of a shirt they like. The catalogue
holds listings with a photo and a description; several share words with the query without being what
the shopper wants (a white linen dress, a white mug "for summer"). The e-commerce instruction preset
tells the model what kind of match to look for.

Run it (offline, with a model folder; the default is the hub id):

    python examples/ecommerce_search.py --model ./lychee-rerank-mm
    python examples/ecommerce_search.py --model tiny      # an untrained model: exercises the code only
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path

from lychee_rerank.core.extras import exit_unless_installed

# Before the imports below, so a missing framework is one line naming its extra, not a traceback.
exit_unless_installed("examples/ecommerce_search.py", {"torch": "local", "transformers": "local"})

from lychee_rerank.adapters.demo.drawing import draw_product
from lychee_rerank.adapters.demo.table import ranking_table
from lychee_rerank.core import Document, LocalReranker, LycheeError, Query
from lychee_rerank.core.profiles import INSTRUCTION_PRESETS, LYCHEE

REFERENCE_PHOTO = Path(__file__).parent / "images" / "shirt_white.png"

# (sku, kind, colour, description): the photo drawn for each listing shows that kind and colour.
CATALOGUE = [
    ("sku-101", "shirt", "white", "White linen shirt, relaxed fit, breathable for summer"),
    ("sku-102", "shirt", "navy", "Navy linen shirt, relaxed fit"),
    ("sku-103", "dress", "white", "White linen summer dress, midi length"),
    ("sku-104", "shirt", "white", "Classic white cotton shirt, slim fit, office wear"),
    ("sku-105", "mug", "white", "White ceramic mug for summer iced coffee"),
    ("sku-106", "shoes", "white", "White canvas sneakers for summer"),
    ("sku-107", "bag", "beige", "Beige linen beach bag"),
    ("sku-108", "shirt", "blue", "Blue oxford cotton shirt, button-down collar"),
]


def main(argv: Sequence[str] | None = None) -> int:
    """Ranks the catalogue for the shopper's query and photo, and prints the table."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default=LYCHEE.default_model, help="hub id, checkpoint folder, or 'tiny'")
    parser.add_argument("--device", help="cuda, cpu... (default: cuda when available)")
    parser.add_argument("--query", default="white linen shirt for summer")
    parser.add_argument("--query-image", default=str(REFERENCE_PHOTO), help="the shopper's reference photo")
    args = parser.parse_args(argv)

    try:
        reranker = LocalReranker(model=args.model, device=args.device)
    except LycheeError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    with tempfile.TemporaryDirectory(prefix="lychee-ecommerce-") as folder:
        documents = []
        for sku, kind, colour, description in CATALOGUE:
            photo = Path(folder) / f"{sku}.png"
            draw_product(kind, colour, variant=len(documents)).save(photo)
            documents.append(Document(text=description, image=str(photo)))
        query = Query(text=args.query, image=args.query_image)
        results = reranker.rerank(query, documents, instruction="ecommerce")

    print(f"model: {reranker.model_name}")
    print(f"query: {args.query!r} + photo {args.query_image}")
    print(f"instruction (ecommerce preset): {INSTRUCTION_PRESETS['ecommerce']}")
    print()
    print(ranking_table([(r.score, CATALOGUE[r.index][0], r.document.text or "") for r in results]))
    return 0


if __name__ == "__main__":
    sys.exit(main())
