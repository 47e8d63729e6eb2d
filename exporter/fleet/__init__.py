"""Which servers: the config's, the discovered ones, this shard's."""
