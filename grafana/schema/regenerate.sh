#!/usr/bin/env bash
# Regenerate grafana/schema/dashboard.schema.json from the TypeScript dashboard types of the
# @grafana/schema npm package. Run by hand when bumping the Grafana version; CI only reads the
# committed file. npm runs in a throwaway dir so no node_modules lands in the repo.
set -euo pipefail

GRAFANA_SCHEMA_VERSION="${GRAFANA_SCHEMA_VERSION:-13.2.3}"
GENERATOR_VERSION="${GENERATOR_VERSION:-2.9.0}"
here="$(cd "$(dirname "$0")" && pwd)"
work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT

cd "$work"
npm init -y >/dev/null
npm install --no-audit --no-fund --silent \
    "@grafana/schema@${GRAFANA_SCHEMA_VERSION}" \
    "ts-json-schema-generator@${GENERATOR_VERSION}" typescript
# No --additional-properties: unknown keys (typos) are errors. Omit keys the types lack
# (e.g. templating.list[].definition, which Grafana only uses for display).
npx ts-json-schema-generator --no-type-check --type Dashboard \
    --path node_modules/@grafana/schema/dist/types/raw/dashboard/x/types.gen.d.ts \
    -o "$here/dashboard.schema.json"
echo "wrote $here/dashboard.schema.json (@grafana/schema ${GRAFANA_SCHEMA_VERSION})"
