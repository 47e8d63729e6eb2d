# helm and kubeconform (Go modules, built with the machine's Go), and the Kubernetes and
# prometheus-operator schemas they validate the chart against, all offline after the first run:
# tests/e2e/test_helm.py uses them. Everything is cached under $OPE_CACHE, keyed by version.
HELM_VERSION=v3.21.4
KUBECONFORM_VERSION=v0.7.0
KUBERNETES_VERSION=v1.36.3
PROMETHEUS_OPERATOR_VERSION=v0.85.0
export OPE_KUBE_TOOLS="$OPE_CACHE/kube-tools"
mkdir -p "$OPE_KUBE_TOOLS/bin"
_go_tool() {  # _go_tool NAME MODULE/cmd/NAME VERSION
    local target="$OPE_KUBE_TOOLS/bin/$1-$3"
    if [ ! -x "$target" ]; then
        command -v go >/dev/null || { echo "go is needed to build $1" >&2; return 1; }
        local gobin
        gobin=$(mktemp -d)
        GOBIN="$gobin" GOFLAGS=-buildvcs=false CGO_ENABLED=0 go install "$2@$3"
        mv "$gobin/$1" "$target"
        rmdir "$gobin"
    fi
    ln -sf "$target" "$OPE_KUBE_TOOLS/bin/$1"
}
_go_tool helm helm.sh/helm/v3/cmd/helm "$HELM_VERSION"
_go_tool kubeconform github.com/yannh/kubeconform/cmd/kubeconform "$KUBECONFORM_VERSION"
"$OPE_KUBE_TOOLS/bin/helm" version --short
"$OPE_KUBE_TOOLS/bin/kubeconform" -v
# JSON schemas from the OpenAPI documents inside the two Go modules (see deploy/kubernetes/schemas.py).
_schemas="$OPE_KUBE_TOOLS/schemas-$KUBERNETES_VERSION-$PROMETHEUS_OPERATOR_VERSION"
if [ ! -f "$_schemas/.complete" ]; then
    _k8s=$(go mod download -json "k8s.io/kubernetes@$KUBERNETES_VERSION" | python3 -c 'import json,sys; print(json.load(sys.stdin)["Dir"])')
    _po=$(go mod download -json "github.com/prometheus-operator/prometheus-operator@$PROMETHEUS_OPERATOR_VERSION" | python3 -c 'import json,sys; print(json.load(sys.stdin)["Dir"])')
    rm -rf "$_schemas"
    .venv/bin/python deploy/kubernetes/schemas.py --kubernetes "$_k8s" --operator "$_po" --out "$_schemas"
    touch "$_schemas/.complete"
fi
ln -sfn "$_schemas" "$OPE_KUBE_TOOLS/schemas"
