"""A LlamaIndex query engine whose retrieved figures are reranked by Lychee before synthesis.

The index holds the demo's paper figures as ``ImageNode``s (the chart in ``image_path``, the caption as
text). A BM25 retriever over the captions is the first stage (nothing to download); ``LycheeRerank``,
a node postprocessor, looks at each chart and caption and keeps the best three; the query engine hands
those to the response synthesizer. The synthesizer uses LlamaIndex's ``MockLLM`` so the example runs
offline: pass ``llm=`` your own model to get a written answer.

Run it (offline, with a model folder; the default is the hub id):

    python examples/llamaindex_query_engine.py --model ./lychee-rerank-mm
    python examples/llamaindex_query_engine.py --model tiny      # an untrained model: exercises the code only
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path

from lychee_rerank.core.extras import exit_unless_installed

# Before the imports below, so a missing framework is one line naming its extra, not a traceback.
exit_unless_installed(
    "examples/llamaindex_query_engine.py", {"llama_index.core": "llamaindex", "torch": "local", "transformers": "local"}
)

from llama_index.core.llms.mock import MockLLM
from llama_index.core.query_engine import RetrieverQueryEngine
from llama_index.core.retrievers import BaseRetriever
from llama_index.core.schema import ImageNode, NodeWithScore, QueryBundle

from lychee_rerank.adapters.demo.corpus import ensure_corpus
from lychee_rerank.adapters.demo.sparse import BM25
from lychee_rerank.adapters.demo.table import ranking_table
from lychee_rerank.adapters.llamaindex import LycheeRerank
from lychee_rerank.core import LocalReranker, LycheeError
from lychee_rerank.core.profiles import LYCHEE


class BM25Retriever(BaseRetriever):
    """The first stage: BM25 over the nodes' text, top ``k``, BM25 as the node score."""

    def __init__(self, nodes: list[ImageNode], k: int = 8) -> None:
        super().__init__()
        self._nodes = nodes
        self._bm25 = BM25.fit(node.text for node in nodes)
        self._k = k

    def _retrieve(self, query_bundle: QueryBundle) -> list[NodeWithScore]:
        scored = [NodeWithScore(node=n, score=self._bm25.score(query_bundle.query_str, n.text)) for n in self._nodes]
        matching = [hit for hit in scored if (hit.score or 0.0) > 0]
        return sorted(matching, key=lambda hit: -(hit.score or 0.0))[: self._k]


def main(argv: Sequence[str] | None = None) -> int:
    """Queries the figure index through the reranking query engine and prints both rankings."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default=LYCHEE.default_model, help="hub id, checkpoint folder, or 'tiny'")
    parser.add_argument("--device", help="cuda, cpu... (default: cuda when available)")
    parser.add_argument("--query", default="Which figure shows accuracy versus training steps?")
    parser.add_argument("--top-n", type=int, default=3, help="nodes kept after reranking")
    args = parser.parse_args(argv)

    try:
        reranker = LocalReranker(model=args.model, device=args.device)
    except LycheeError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    with tempfile.TemporaryDirectory(prefix="lychee-llamaindex-") as folder:
        nodes = [
            ImageNode(id_=f"doc{item.id}", text=item.text, image_path=str(Path(folder, "images", item.image)))
            for item in ensure_corpus(folder)
            if item.kind == "figure"
        ]
        retriever = BM25Retriever(nodes, k=8)
        engine = RetrieverQueryEngine.from_args(
            retriever,
            llm=MockLLM(max_tokens=32),  # offline stand-in: pass your own LLM for a written answer
            node_postprocessors=[
                LycheeRerank(reranker=reranker, top_n=args.top_n, instruction="academic", keep_retrieval_score=True)
            ],
        )
        first_stage = retriever.retrieve(args.query)
        response = engine.query(args.query)

    print(f"model: {reranker.model_name}")
    print(f"question: {args.query!r}")
    print(f"\nfirst stage (BM25 retriever, top {len(first_stage)}):")
    print(ranking_table([(hit.score or 0.0, hit.node.node_id, hit.node.get_content()) for hit in first_stage]))
    print(f"\nsource nodes after LycheeRerank (top_n={args.top_n}, academic preset):")
    print(
        ranking_table([(hit.score or 0.0, hit.node.node_id, hit.node.get_content()) for hit in response.source_nodes])
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
