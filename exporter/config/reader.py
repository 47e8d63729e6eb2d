"""`python -m exporter.config.reader PATH`: load and check a config in a process of its own.

A reload runs this instead of parsing in the exporter: libyaml holds the GIL while it composes
a document, so a big file parsed on a thread would still stall `/metrics`; here the exporter
only unpickles the answer. A file that blocks (a FIFO, a hung mount) or takes too long costs a
child process that is killed, not a thread that lingers.

Writes to stdout the pickle of the `Config`, or of the tuple of `ConfigError` messages.
"""

from __future__ import annotations

import contextlib
import os
import pickle
import sys

from exporter.config.loader import ConfigError, load_config


def main(argv: list[str]) -> int:
    """Load the config at argv[0] and write the outcome; 2 on a wrong command line."""
    if len(argv) != 1:
        print("usage: python -m exporter.config.reader CONFIG_FILE", file=sys.stderr)  # noqa: T201
        return 2
    with contextlib.suppress(OSError):
        os.nice(10)  # below the exporter: on a busy host the reload waits, not the scrapes
    try:
        outcome: object = load_config(argv[0])
    except ConfigError as exc:
        outcome = exc.errors
    sys.stdout.buffer.write(pickle.dumps(outcome, protocol=pickle.HIGHEST_PROTOCOL))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
