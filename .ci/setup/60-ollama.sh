# The real tier (tests/real): a real `ollama serve`, built from the Go module proxy, and
# Debian's docker-registry (Docker distribution 2.8). The binary is cached under
# $OPE_CACHE/ollama/<version>/, so a second run on the same machine does not rebuild.
# OLLAMA_VERSION=latest builds the newest release the proxy serves instead of the pin.
OLLAMA_PINNED=0.17.4
need_apt docker-registry gcc g++ nlohmann-json3-dev libstb-dev
command -v go >/dev/null || { echo "the real tier needs Go >= 1.26 on PATH" >&2; exit 1; }

ollama_version="${OLLAMA_VERSION:-$OLLAMA_PINNED}"
mkdir -p "$OPE_CACHE/ollama"
if [ "$ollama_version" = latest ]; then
    ollama_version=$(go list -m -f '{{.Version}}' github.com/ollama/ollama@latest)
    echo "${ollama_version#v}" >"$OPE_CACHE/ollama/latest"
fi
ollama_version="${ollama_version#v}"
ollama_dir="$OPE_CACHE/ollama/$ollama_version"

if [ ! -x "$ollama_dir/ollama" ]; then
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
    echo "building ollama $ollama_version (several minutes on 2 cores)"
    CGO_ENABLED=1 CGO_CPPFLAGS="-I$OPE_CACHE/include" GOBIN="$ollama_dir.tmp" nice go install -trimpath \
        "-ldflags=-X=github.com/ollama/ollama/version.Version=$ollama_version" \
        "github.com/ollama/ollama@v$ollama_version"
    mkdir -p "$ollama_dir"
    mv "$ollama_dir.tmp/ollama" "$ollama_dir/ollama"
    rm -rf "$ollama_dir.tmp"
fi
"$ollama_dir/ollama" --version 2>&1 | tail -1
docker-registry --version

# From here on a missing part of the real tier fails its tests instead of skipping them.
export OPE_REQUIRE_REAL=1
