"""Hierarchical communities of the hub's merged graph for GraphRAG, kept current
incrementally.

- :mod:`.model`: the graph as the clustering sees it (undirected, weighted adjacency)
  and each entity's profile for the summaries, built from rows a read returns.
- :mod:`.leiden`: Leiden clustering into a hierarchy (level 0 the finest), in full or
  incrementally around changed entities, with stable community ids.
- :mod:`.summary`: statistical summaries of each community (sizes, types, predicates,
  PageRank representatives, tf-idf keywords, reporting edges), kept additively.
- :mod:`.store`: the tables, the change feed (triggers), writes and queries.
- :mod:`.service`: the hub's loop that keeps them current; :mod:`.api` its HTTP views.
"""
