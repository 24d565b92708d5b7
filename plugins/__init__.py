"""Search-engine side integrations (Elasticsearch inference endpoints, OpenSearch ML connectors).

Nothing ships here yet; see the project's issues.
"""
