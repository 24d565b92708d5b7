"""Client-side integrations: Elasticsearch/OpenSearch rescoring, Qdrant, LangChain, LlamaIndex, the demo.

Adapters depend only on the ``Reranker`` protocol and helpers in :mod:`lychee_rerank.core`, never on
each other. Importing an adapter whose framework is missing raises an ImportError that names the extra
to install.
"""
