"""Routing data: the routing dataset (one row per query, correctness and cost per target), its importers,
its summary, and the storage helpers every stage writes through (local paths and cloud URIs)."""
