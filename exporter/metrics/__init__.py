"""`/metrics`: the family table, the cached renderer, content negotiation. No I/O."""
