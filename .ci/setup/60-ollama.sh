# The real tier (tests/e2e/real): real `ollama serve` releases, built from the Go module proxy, and
# Debian's docker-registry (Docker distribution 2.8). Two releases: the pinned newest and an
# older one still common on fleets; the tier runs against each (OPE_OLLAMA_VERSIONS). Each
# binary is cached under $OPE_CACHE/ollama/<version>/, so a second run does not rebuild.
# OLLAMA_VERSION=latest builds the newest release the proxy serves instead of the pin;
# OLLAMA_VERSIONS="a b" builds exactly those releases.
OLLAMA_PINNED=0.17.4
OLLAMA_OLDER=0.13.5
need_apt docker-registry gcc g++ nlohmann-json3-dev libstb-dev
command -v go >/dev/null || { echo "the real tier needs Go >= 1.26 on PATH" >&2; exit 1; }
mkdir -p "$OPE_CACHE/ollama"

# build_ollama VERSION: go install one release into the cache (unless it is there already).
build_ollama() {
    local version="${1#v}" dir="$OPE_CACHE/ollama/${1#v}" mini_tmp
    if [ -x "$dir/ollama" ]; then
        return 0
    fi
    # Go module zips leave out vendor/ directories, so llama.cpp's vendored headers are
    # missing: nlohmann/json and stb come from Debian, miniaudio.h from its PyPI sdist.
    if [ ! -f "$OPE_CACHE/include/miniaudio/miniaudio.h" ]; then
        mini_tmp=$(mktemp -d)
        .venv/bin/pip download -q --no-binary :all: --no-deps miniaudio==1.71 -d "$mini_tmp"
        tar -xzf "$mini_tmp/miniaudio-1.71.tar.gz" -C "$mini_tmp" miniaudio-1.71/miniaudio/miniaudio.h
        mkdir -p "$OPE_CACHE/include/miniaudio"
        mv "$mini_tmp/miniaudio-1.71/miniaudio/miniaudio.h" "$OPE_CACHE/include/miniaudio/"
        rm -rf "$mini_tmp"
    fi
    echo "building ollama $version (several minutes on 2 cores)"
    CGO_ENABLED=1 CGO_CPPFLAGS="-I$OPE_CACHE/include" GOBIN="$dir.tmp" nice go install -trimpath \
        "-ldflags=-X=github.com/ollama/ollama/version.Version=$version" \
        "github.com/ollama/ollama@v$version"
    mkdir -p "$dir"
    mv "$dir.tmp/ollama" "$dir/ollama"
    rm -rf "$dir.tmp"
}

ollama_newest="${OLLAMA_VERSION:-$OLLAMA_PINNED}"
if [ "$ollama_newest" = latest ]; then
    ollama_newest=$(go list -m -f '{{.Version}}' github.com/ollama/ollama@latest)
    echo "${ollama_newest#v}" >"$OPE_CACHE/ollama/latest"
fi
OPE_OLLAMA_VERSIONS=""
for ollama_version in ${OLLAMA_VERSIONS:-${ollama_newest#v} $OLLAMA_OLDER}; do
    build_ollama "$ollama_version"
    "$OPE_CACHE/ollama/${ollama_version#v}/ollama" --version 2>&1 | tail -1
    OPE_OLLAMA_VERSIONS="$OPE_OLLAMA_VERSIONS ${ollama_version#v}"
done
docker-registry --version

# From here on a missing part of the real tier fails its tests instead of skipping them, and
# the tier runs against every release built above.
export OPE_REQUIRE_REAL=1
export OPE_OLLAMA_VERSIONS="${OPE_OLLAMA_VERSIONS# }"
