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
# Every direct dependency must be installed at exactly its floor: a floor that another floor
# pulls above (or a dependency without one) is a floor no run ever tests.
.venv-lowest/bin/python - <<'PY'
import importlib.metadata, re, sys, tomllib
from packaging.version import Version

project = tomllib.load(open("pyproject.toml", "rb"))["project"]
wrong = []
for requirement in project["dependencies"] + project["optional-dependencies"]["test"]:
    found = re.fullmatch(r"([A-Za-z0-9_.-]+)\s*>=\s*([^,;\s]+)", requirement)
    if found is None:
        wrong.append(f"{requirement}: no floor (want NAME>=VERSION)")
        continue
    name, floor = found.groups()
    installed = importlib.metadata.version(name)
    if Version(installed) != Version(floor):
        wrong.append(f"{requirement}: the lowest resolution installs {installed}")
if wrong:
    sys.exit("floors in pyproject.toml that no run tests:\n  " + "\n  ".join(wrong))
PY
