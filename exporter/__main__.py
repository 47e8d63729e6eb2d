"""`python -m exporter` runs the same CLI as the `ollama-pull-exporter` script."""

import sys

from exporter.cli import main

sys.exit(main())
