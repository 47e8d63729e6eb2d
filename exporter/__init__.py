"""Prometheus exporter and pull monitor for Ollama."""

__version__ = "0.2.0"
"""The one version string: the package metadata (pyproject.toml reads it from here), `--version`,
the page footer, `ollama_pull_exporter_build_info` and the User-Agent. CHANGELOG.md names it."""
USER_AGENT = f"ollama-pull-exporter/{__version__}"
"""What every request of ours to Ollama and to registries says it is."""
