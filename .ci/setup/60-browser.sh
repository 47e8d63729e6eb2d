# Browser tests of the live page (tests/e2e/test_browser.py): Debian's headless Chromium, driven by
# Playwright for Python (the test extra; it never downloads a browser of its own), and axe-core
# from npm for the accessibility check, cached per version.
need_apt chromium
export PLAYWRIGHT_SKIP_BROWSER_DOWNLOAD=1
AXE_VERSION=4.14.1
if [ ! -f "$OPE_CACHE/axe-core-$AXE_VERSION/package/axe.min.js" ]; then
    command -v npm >/dev/null || need_apt npm
    rm -rf "$OPE_CACHE/axe-core-$AXE_VERSION.tmp"
    mkdir -p "$OPE_CACHE/axe-core-$AXE_VERSION.tmp"
    (cd "$OPE_CACHE/axe-core-$AXE_VERSION.tmp" && npm pack --silent "axe-core@$AXE_VERSION" >/dev/null \
        && tar -xzf "axe-core-$AXE_VERSION.tgz")
    mv "$OPE_CACHE/axe-core-$AXE_VERSION.tmp" "$OPE_CACHE/axe-core-$AXE_VERSION"
fi
export OPE_AXE_JS="$OPE_CACHE/axe-core-$AXE_VERSION/package/axe.min.js"
chromium --version
