#!/usr/bin/env bash
# Validates the operator's Grafana dashboards against Grafana's own dashboard schema: the ones
# `session-operator dashboards` generates for the example SessionServices (the operator's
# overview plus <name>-slo / -hot-path / -redis per service) and the chart's copy in
# charts/session-operator/dashboards/. A dashboard Grafana would reject or silently mangle
# (a misspelt field, a string where a number belongs) fails here instead of in a cluster.
#
# Grafana publishes no JSON Schema file in a registry package; the classic dashboard model is
# published as TypeScript types in @grafana/schema (generated there from Grafana's CUE
# definitions). So the schema is generated from those types with ts-json-schema-generator,
# strict (an unknown field anywhere is an error), and the files are checked with ajv. The npm
# packages are pinned and installed once into $E2E_CACHE/grafana-schema.
# Finally a deliberately broken dashboard must be rejected, so a schema that accepts anything
# cannot make this test pass. Needs node/npm; SESSION_OPERATOR_BIN overrides the binary
# (absolute, or relative to the repository root).
set -euo pipefail
cd "$(dirname "$0")/.."
GRAFANA_SCHEMA_VERSION=13.2.3
PACKAGES=("@grafana/schema@$GRAFANA_SCHEMA_VERSION" ts-json-schema-generator@2.4.0 ajv-cli@5.0.0)
BIN=${SESSION_OPERATOR_BIN:-target/debug/session-operator}
CACHE="${E2E_CACHE:-/var/cache/session-operator-e2e}/grafana-schema"
SCHEMA="$CACHE/dashboard-$GRAFANA_SCHEMA_VERSION.strict.schema.json"
EXAMPLES=(examples/sessionservice-standalone.yaml examples/sessionservice-cluster.yaml
  examples/sessionservice-external.yaml)

[ -x "$BIN" ] || { echo "dashboards: $BIN not found (build it first: cargo build)" >&2; exit 1; }
mkdir -p "$CACHE"
if [ ! -s "$SCHEMA" ] || [ ! -x "$CACHE/node_modules/.bin/ajv" ]; then
  echo "==> installing ${PACKAGES[*]} into $CACHE"
  npm install --prefix "$CACHE" --silent --no-audit --no-fund "${PACKAGES[@]}"
  "$CACHE/node_modules/.bin/ts-json-schema-generator" --no-type-check -t Dashboard \
    -p "$CACHE/node_modules/@grafana/schema/dist/types/raw/dashboard/x/types.gen.d.ts" \
    -o "$SCHEMA.tmp"
  mv "$SCHEMA.tmp" "$SCHEMA"
fi

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
mkdir "$work/generated"
"$BIN" dashboards --out "$work/generated" "${EXAMPLES[@]}" \
  || { echo "dashboards: $BIN dashboards failed" >&2; exit 1; }
shopt -s nullglob
generated=("$work"/generated/*.json) chart=(charts/session-operator/dashboards/*.json)
[ "${#generated[@]}" -gt 0 ] || { echo "dashboards: $BIN dashboards wrote no JSON files" >&2; exit 1; }
[ "${#chart[@]}" -gt 0 ] || { echo "dashboards: no charts/session-operator/dashboards/*.json" >&2; exit 1; }
files=("${generated[@]}" "${chart[@]}")

ajv() {
  "$CACHE/node_modules/.bin/ajv" validate --spec=draft7 --strict=false --errors=line -s "$SCHEMA" "$@"
}
args=()
for f in "${files[@]}"; do args+=(-d "$f"); done
if ! out=$(ajv "${args[@]}" 2>&1); then
  # ajv prints "FILE invalid" and then the errors as one JSON line; show them one per line.
  echo "$out" | sed "s|$work/generated/|generated: |" | python3 -c '
import json, sys
for line in sys.stdin:
    if line.startswith("["):
        for e in json.loads(line):
            print("  at %s: %s %s" % (e["instancePath"] or "/", e["message"], e["params"] or ""))
    elif not line.rstrip().endswith(" valid"):
        print(line.rstrip())' >&2
  echo "dashboards: invalid against @grafana/schema $GRAFANA_SCHEMA_VERSION (Dashboard)" >&2
  exit 1
fi

# The validator must reject a dashboard whose panels are not a list.
python3 - "${files[0]}" "$work/broken.json" <<'EOF'
import json, sys
d = json.load(open(sys.argv[1])); d["panels"] = "x"; json.dump(d, open(sys.argv[2], "w"))
EOF
if ajv -d "$work/broken.json" >/dev/null 2>&1; then
  echo "dashboards: ajv accepted a dashboard with \"panels\": \"x\"; the check is broken" >&2
  exit 1
fi
echo "==> ${#files[@]} dashboards valid against @grafana/schema $GRAFANA_SCHEMA_VERSION (Dashboard, strict)"
