"""Search-engine side integrations: what runs inside Elasticsearch and OpenSearch.

- :mod:`lychee_rerank.plugins.elasticsearch`: an inference endpoint (``custom`` service) that calls the
  rerank service, for the ``text_similarity_reranker`` retriever.
- :mod:`lychee_rerank.plugins.opensearch`: an ml-commons connector, remote model and search pipeline with
  the ``rerank`` response processor.
"""
