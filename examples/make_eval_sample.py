"""Writes the sample collection of ``lychee-rerank eval sample`` (core/evaluation/sample/) in the BEIR layout.

Thirty product photos drawn with PIL (five kinds in six colours), captions of which every third leaves the
colour to the photo, so a text-only first stage cannot tell those apart and a multimodal reranker can;
twelve queries: text, image, or both. Deterministic: running it again writes the same files.

    .venv/bin/python examples/make_eval_sample.py
"""

from __future__ import annotations

import json
from pathlib import Path

from lychee_rerank.adapters.demo.drawing import draw_product

KINDS = ("shirt", "dress", "shoes", "bag", "mug")
COLOURS = ("red", "navy", "white", "green", "yellow", "black")
DETAILS = {
    "shirt": "cotton shirt with a relaxed fit",
    "dress": "summer dress, knee length",
    "shoes": "pair of running shoes",
    "bag": "leather handbag with a strap",
    "mug": "ceramic coffee mug",
}
SIZE = 64  # pixels: a few hundred bytes to 2 KB per PNG, and enough for a vision tower to see the colour

TARGET = Path(__file__).resolve().parents[1] / "core" / "evaluation" / "sample"


def main() -> None:
    images = TARGET / "images"
    (TARGET / "qrels").mkdir(parents=True, exist_ok=True)
    images.mkdir(parents=True, exist_ok=True)
    corpus = []
    for number, (kind, colour) in enumerate((k, c) for k in KINDS for c in COLOURS):
        doc_id = f"{colour}-{kind}"
        draw_product(kind, colour, size=SIZE).save(images / f"{doc_id}.png", optimize=True)
        # Every third caption leaves the colour out: only the photo says it.
        text = f"A {colour} {DETAILS[kind]}." if number % 3 else f"A {DETAILS[kind]}; colour as pictured."
        corpus.append({"_id": doc_id, "title": kind.capitalize(), "text": text, "image": f"images/{doc_id}.png"})

    queries: list[dict[str, str]] = []
    qrels: list[tuple[str, str, int]] = []

    def judge(query_id: str, kind: str, colour: str) -> None:
        for other in COLOURS:
            qrels.append((query_id, f"{other}-{kind}", 2 if other == colour else 1))

    for number, (kind, colour) in enumerate(
        [
            ("shirt", "red"),
            ("dress", "navy"),
            ("mug", "yellow"),
            ("bag", "black"),
            ("shoes", "white"),
            ("dress", "green"),
        ]
    ):
        query_id = f"t{number}"
        queries.append({"_id": query_id, "text": f"{colour} {kind}"})
        judge(query_id, kind, colour)
    for number, (kind, colour) in enumerate(
        [("shirt", "navy"), ("mug", "green"), ("shoes", "red"), ("bag", "white"), ("dress", "yellow"), ("mug", "black")]
    ):
        query_id = f"i{number}"
        name = f"query-{colour}-{kind}.png"
        draw_product(kind, colour, size=SIZE, variant=1).save(images / name, optimize=True)
        # Half the image queries also say what they want in words; the others are the picture alone.
        query = {"_id": query_id, "image": f"images/{name}"}
        if number % 2 == 0:
            query["text"] = f"a {kind} like this one"
        queries.append(query)
        judge(query_id, kind, colour)

    (TARGET / "corpus.jsonl").write_text("".join(json.dumps(row) + "\n" for row in corpus))
    (TARGET / "queries.jsonl").write_text("".join(json.dumps(row) + "\n" for row in queries))
    (TARGET / "qrels" / "test.tsv").write_text(
        "query-id\tcorpus-id\tscore\n" + "".join(f"{q}\t{d}\t{s}\n" for q, d, s in qrels)
    )
    size = sum(path.stat().st_size for path in TARGET.rglob("*") if path.is_file())
    print(f"wrote {len(corpus)} documents, {len(queries)} queries to {TARGET} ({size / 1024:.0f} KB)")


if __name__ == "__main__":
    main()
