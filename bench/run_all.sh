#!/usr/bin/env bash
# Every benchmark of issue 5 with the settings of docs/performance.md; results in bench/results/.
# About 20 minutes on 2 cores. Needs the bench extra: pip install -e '.[bench]'.
# Measures the exporter of this checkout: run it from a clean one (git worktree) if others edit it.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-.venv/bin/python}
OUT=bench/results
mkdir -p "$OUT"
"$PY" -m bench.ingest --json "$OUT/ingest.json" | tee "$OUT/ingest.md"
"$PY" -m bench.fleet --json "$OUT/fleet.json" | tee "$OUT/fleet.md"
"$PY" -m bench.scaling --json "$OUT/scaling.json" --plot docs/img/scaling.png \
    --baseline "$OUT/history/scaling-2a8fcf0.json" | tee "$OUT/scaling.md"
