"""Client-side integrations (Elasticsearch/OpenSearch rescoring, Qdrant, LangChain, LlamaIndex).

Adapters depend only on the ``Reranker`` protocol from :mod:`lychee_rerank.core`.
"""
