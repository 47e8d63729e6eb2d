# A second venv, .venv-lowest, with the lowest versions pyproject.toml declares: every floor must
# be true (issue 8 found `prometheus-client>=0.20` while the code needs 0.24). uv resolves
# `--resolution lowest-direct`: our direct dependencies (runtime and test extra) at their floors,
# theirs at whatever fits. .ci/run runs the suite in it once more, after the newest versions.
UV_VERSION=0.13.8
uv_home="$OPE_CACHE/uv-$UV_VERSION"
if [ ! -x "$uv_home/bin/uv" ]; then
    python3 -m venv "$uv_home"
    "$uv_home/bin/pip" install -q "uv==$UV_VERSION"
fi
rm -rf .venv-lowest
"$uv_home/bin/uv" venv -q --python "$(command -v python3)" .venv-lowest
VIRTUAL_ENV="$PWD/.venv-lowest" UV_CACHE_DIR="$OPE_CACHE/uv-cache" \
    "$uv_home/bin/uv" pip install -q --resolution lowest-direct -e '.[test]'
