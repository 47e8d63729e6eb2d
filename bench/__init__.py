"""Benchmarks for ollama-pull-exporter (run by hand; see docs/performance.md)."""
