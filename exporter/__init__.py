"""Prometheus exporter and pull monitor for Ollama."""

__version__ = "0.1.0"
