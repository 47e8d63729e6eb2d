# Prometheus 3 and its promtool, built from the Go module with the machine's Go (v3 releases
# are tagged v0.3XX.Y in the module proxy: v0.309.1 is Prometheus 3.9.1). The dashboard and
# alert-rule tests run against this one as well as Debian's 2.42 (tests/prometheus3.py finds
# it through OPE_PROMETHEUS3). Built once per machine, cached under $OPE_CACHE by version.
PROMETHEUS3_MODULE_VERSION=v0.309.1
PROMETHEUS3_RELEASE=3.9.1
export OPE_PROMETHEUS3="$OPE_CACHE/prometheus3-$PROMETHEUS3_MODULE_VERSION"
if [ ! -x "$OPE_PROMETHEUS3/prometheus" ] || [ ! -x "$OPE_PROMETHEUS3/promtool" ]; then
    command -v go >/dev/null || { echo "go is needed to build Prometheus 3" >&2; return 1; }
    # `go install ...@version` refuses this module (its go.mod has exclude directives), so
    # build inside the downloaded module instead.
    _p3_src=$(go mod download -json "github.com/prometheus/prometheus@$PROMETHEUS3_MODULE_VERSION" |
        python3 -c 'import json,sys; print(json.load(sys.stdin)["Dir"])')
    rm -rf "$OPE_PROMETHEUS3.partial"
    (cd "$_p3_src" && CGO_ENABLED=0 GOFLAGS=-buildvcs=false go build -trimpath \
        -ldflags "-X github.com/prometheus/common/version.Version=$PROMETHEUS3_RELEASE" \
        -o "$OPE_PROMETHEUS3.partial/" ./cmd/prometheus ./cmd/promtool)
    mv "$OPE_PROMETHEUS3.partial" "$OPE_PROMETHEUS3"
fi
"$OPE_PROMETHEUS3/prometheus" --version 2>&1 | head -1
