"""The config files: typed, strict YAML with line numbers, windows, the web config."""
