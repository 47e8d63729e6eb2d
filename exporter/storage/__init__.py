"""The `--storage.path` SQLite file: last runs and run history."""
