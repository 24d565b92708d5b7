"""A LangChain RAG pipeline: a first-stage retriever, Lychee reranking, then the prompt for the LLM.

The knowledge base is the demo's product catalogue: each LangChain ``Document`` holds a description in
``page_content`` and its photo in ``metadata["image_path"]``, which the reranker reads. The first stage
is BM25 over the descriptions (a small custom retriever, so nothing is downloaded); the reranker keeps
the best three; the chain ends in the prompt a chat model would receive. Plug your own chat model in
after the prompt (``... | prompt | ChatOpenAI()``): this example stops where the network would start.

With LangChain 1.x's ``langchain-classic`` installed, the same compressor also works as the
``base_compressor`` of ``ContextualCompressionRetriever``.

Run it (offline, with a model folder; the default is the hub id):

    python examples/langchain_rag.py --model ./lychee-rerank-mm
    python examples/langchain_rag.py --model tiny      # an untrained model: exercises the code only
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
    "examples/langchain_rag.py", {"langchain_core": "langchain", "torch": "local", "transformers": "local"}
)

from langchain_core.callbacks import CallbackManagerForRetrieverRun
from langchain_core.documents import Document
from langchain_core.prompts import ChatPromptTemplate
from langchain_core.retrievers import BaseRetriever
from langchain_core.runnables import RunnableParallel, RunnablePassthrough
from pydantic import ConfigDict

from lychee_rerank.adapters.demo.corpus import ensure_corpus
from lychee_rerank.adapters.demo.sparse import BM25
from lychee_rerank.adapters.demo.table import ranking_table
from lychee_rerank.adapters.langchain import RELEVANCE_SCORE_KEY, LycheeRerank
from lychee_rerank.core import LocalReranker, LycheeError
from lychee_rerank.core.profiles import LYCHEE

PROMPT = ChatPromptTemplate.from_messages(
    [
        ("system", "You are a shop assistant. Recommend products only from the context, citing their ids."),
        ("human", "Context:\n{context}\n\nCustomer: {question}"),
    ]
)


class BM25Retriever(BaseRetriever):
    """The first stage: BM25 over ``page_content``, top ``k``; the retrieval score goes into metadata."""

    model_config = ConfigDict(arbitrary_types_allowed=True)

    documents: list[Document]
    bm25: BM25
    k: int = 8

    @classmethod
    def from_documents(cls, documents: list[Document], k: int = 8) -> BM25Retriever:
        """Fits BM25 statistics on the documents."""
        return cls(documents=documents, bm25=BM25.fit(d.page_content for d in documents), k=k)

    def _get_relevant_documents(self, query: str, *, run_manager: CallbackManagerForRetrieverRun) -> list[Document]:
        scored = [(self.bm25.score(query, d.page_content), d) for d in self.documents]
        best = sorted((pair for pair in scored if pair[0] > 0), key=lambda pair: -pair[0])[: self.k]
        return [Document(d.page_content, metadata={**d.metadata, "bm25": score}) for score, d in best]


def _context(documents: list[Document]) -> str:
    return "\n".join(f"[{d.metadata['id']}] {d.page_content}" for d in documents)


def main(argv: Sequence[str] | None = None) -> int:
    """Runs retrieve -> rerank -> prompt for one question and prints each stage."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default=LYCHEE.default_model, help="hub id, checkpoint folder, or 'tiny'")
    parser.add_argument("--device", help="cuda, cpu... (default: cuda when available)")
    parser.add_argument("--query", default="a white linen shirt for a summer holiday")
    parser.add_argument("--top-n", type=int, default=3, help="documents kept after reranking")
    args = parser.parse_args(argv)

    try:
        reranker = LocalReranker(model=args.model, device=args.device)
    except LycheeError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    with tempfile.TemporaryDirectory(prefix="lychee-langchain-") as folder:
        items = ensure_corpus(folder)
        knowledge_base = [
            Document(item.text, metadata={"id": f"p{item.id}", "image_path": str(Path(folder, "images", item.image))})
            for item in items
            if item.kind == "product"
        ]
        retriever = BM25Retriever.from_documents(knowledge_base, k=8)
        compressor = LycheeRerank(reranker=reranker, top_n=args.top_n, instruction="ecommerce")
        # retrieve -> rerank -> (kept documents, prompt); "| chat_model" would follow the prompt.
        to_prompt = {"context": _context, "question": lambda _: args.query} | PROMPT
        chain = (
            {"documents": retriever, "query": RunnablePassthrough()}
            | compressor.as_runnable()
            | RunnableParallel(kept=RunnablePassthrough(), prompt=to_prompt)
        )
        first_stage = retriever.invoke(args.query)
        answer = chain.invoke(args.query)
        kept, prompt = answer["kept"], answer["prompt"]

    print(f"model: {reranker.model_name}")
    print(f"question: {args.query!r}")
    print(f"\nfirst stage (BM25 retriever, top {len(first_stage)}):")
    print(ranking_table([(d.metadata["bm25"], d.metadata["id"], d.page_content) for d in first_stage]))
    print(f"\nafter LycheeRerank (top_n={args.top_n}, ecommerce preset):")
    print(ranking_table([(d.metadata[RELEVANCE_SCORE_KEY], d.metadata["id"], d.page_content) for d in kept]))
    print("\nprompt for the chat model:")
    for message in prompt.to_messages():
        lines = str(message.content).splitlines()
        print(f"  [{message.type}] {lines[0]}")
        for line in lines[1:]:
            print(f"    {line}".rstrip())
    return 0


if __name__ == "__main__":
    sys.exit(main())
