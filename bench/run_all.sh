#!/usr/bin/env bash
# Every benchmark of issue 5 with the settings of docs/performance.md; results in bench/results/.
# About 25 minutes on 2 cores. Needs the bench extra: pip install -e '.[bench]'.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-.venv/bin/python}
OUT=bench/results
mkdir -p "$OUT"
"$PY" -m bench.ingest --lines 500000 --layers 8 --rounds 7 --json "$OUT/ingest.json" | tee "$OUT/ingest.md"
for variant in stock proposed; do
    "$PY" -m bench.fleet --exporter "$variant" --json "$OUT/fleet-$variant.json" | tee "$OUT/fleet-$variant.md"
done
"$PY" -m bench.fleet --exporter proposed --coalesce 0.25 --json "$OUT/fleet-proposed-coalesced.json" \
    | tee "$OUT/fleet-proposed-coalesced.md"
"$PY" -m bench.scaling --json "$OUT/scaling.json" --plot docs/img/scaling.png | tee "$OUT/scaling.md"
