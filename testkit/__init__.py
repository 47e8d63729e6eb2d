"""Process harnesses that the tests and the benchmarks share.

Run the exporter, a real Prometheus, make TLS certificates. Not shipped (pyproject.toml
packages only exporter and ollama_sim); tests/harness.py re-exports it for the test modules
that import it from there.
"""
