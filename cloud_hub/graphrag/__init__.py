"""GraphRAG on the hub: text, vector and hybrid search, communities, local and global search."""
