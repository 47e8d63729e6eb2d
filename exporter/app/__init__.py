"""Assembly and lifetime: the command line, the runtime that applies configs, `--once`."""
