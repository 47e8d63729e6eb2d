# The release as users get it: build the sdist and the wheel (PyPA's `build`, in a venv of its
# own), install the wheel into a clean venv (no clone on sys.path, no editable install), and run
# it there: `--version` must print the version exporter/__init__.py and CHANGELOG.md name, and a
# short `--demo --once` (one round of the demo's pulls, about 40 s) must print one line per demo
# model and exit 1, the demo's deliberate disk_full failure. Sourced by .ci/run after the venvs.
BUILD_VERSION=1.3.0
build_home="$OPE_CACHE/build-$BUILD_VERSION"
if [ ! -x "$build_home/bin/pyproject-build" ]; then
    python3 -m venv "$build_home"
    "$build_home/bin/pip" install -q "build==$BUILD_VERSION"
fi
wheel_tmp=$(mktemp -d)
"$build_home/bin/pyproject-build" --outdir "$wheel_tmp/dist" . >"$wheel_tmp/build.log" 2>&1 \
    || { cat "$wheel_tmp/build.log" >&2; exit 1; }
python3 -m venv "$wheel_tmp/venv"
"$wheel_tmp/venv/bin/pip" install -q "$wheel_tmp"/dist/*.whl
version=$(sed -n 's/^__version__ = "\(.*\)"$/\1/p' exporter/__init__.py)
(
    cd "$wheel_tmp"  # away from the clone: the wheel alone must do
    shown=$("$wheel_tmp/venv/bin/ollama-pull-exporter" --version)
    [ "$shown" = "ollama-pull-exporter $version" ] \
        || { echo "wheel: --version says '$shown', want $version" >&2; exit 1; }
    ls dist/ollama_pull_exporter-"$version".tar.gz dist/ollama_pull_exporter-"$version"-py3-none-any.whl >/dev/null
    set +e
    "$wheel_tmp/venv/bin/ollama-pull-exporter" --demo --once >once.out 2>once.err
    code=$?
    set -e
    sorted=$(sort once.out | cut -d' ' -f1-3)
    want="server=demo model=gemma3:270m result=success
server=demo model=llama3.2:1b result=success
server=demo model=mistral:7b result=failure
server=demo model=qwen3:0.6b result=success"
    if [ "$code" != 1 ] || [ "$sorted" != "$want" ]; then
        echo "wheel: --demo --once exited $code (want 1) with:" >&2
        cat once.out once.err >&2
        exit 1
    fi
)
grep -q "^## $version$" CHANGELOG.md || { echo "CHANGELOG.md has no '## $version'" >&2; exit 1; }
echo "wheel: ollama-pull-exporter $version builds, installs and runs its demo"
rm -rf "$wheel_tmp"
