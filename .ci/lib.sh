# Helpers that .ci/run and the steps in .ci/setup/ share. Sourced, not run.

# Everything CI builds or downloads once per machine lives here (keyed by version inside).
export OPE_CACHE="${XDG_CACHE_HOME:-$HOME/.cache}/ollama-pull-exporter"
mkdir -p "$OPE_CACHE"

_apt_updated=0
# need_apt PACKAGE...: install the Debian packages that are not installed yet.
need_apt() {
    local missing=()
    for pkg in "$@"; do
        dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q 'install ok installed' || missing+=("$pkg")
    done
    [ ${#missing[@]} -eq 0 ] && return 0
    if [ "$_apt_updated" = 0 ]; then
        apt-get update -qq
        _apt_updated=1
    fi
    apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
}
