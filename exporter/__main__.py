"""`python -m exporter` and the `ollama-pull-exporter` script.

Signal handling is installed before anything heavy is imported: until then Python's
defaults would let a SIGHUP kill the process during its first half second.
"""

from exporter.core import signals

signals.install()

import sys  # noqa: E402 - after the signal handlers, on purpose

from exporter.app.cli import main as _main  # noqa: E402


def run() -> None:
    """The console script's entry point."""
    sys.exit(_main())


if __name__ == "__main__":
    run()
