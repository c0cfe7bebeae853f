#!/usr/bin/env bash
# The project's test command: formatting, lints, and every test of the workspace.
# It installs what it needs itself; CI (.ci/run) runs exactly this.
set -euo pipefail
cd "$(dirname "$0")/.."

echo "== nvcc (PyPI wheels into the git-ignored .venv)"
kernels/scripts/install-nvcc.sh
echo "== C compiler, nm and valgrind (the C ABI tests)"
missing=()
command -v cc >/dev/null || missing+=(gcc)
command -v nm >/dev/null || missing+=(binutils)
command -v valgrind >/dev/null || missing+=(valgrind)
if [ ${#missing[@]} -gt 0 ]; then
    echo "installing ${missing[*]} from Debian's archive"
    sudo=""
    [ "$(id -u)" -eq 0 ] || sudo="sudo"
    $sudo apt-get update -qq && $sudo apt-get install -y -qq "${missing[@]}"
fi
echo "== Chromium (the page test of streamdit serve, tools/tests/serve_page.rs)"
chromium_bin=""
for b in chromium chromium-browser; do
    command -v "$b" >/dev/null && chromium_bin="$b" && break
done
if [ -z "$chromium_bin" ]; then
    echo "installing chromium from Debian's archive"
    sudo=""
    [ "$(id -u)" -eq 0 ] || sudo="sudo"
    if $sudo apt-get update -qq && $sudo env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium; then
        chromium_bin=chromium
    else
        echo "WARNING: chromium could not be installed: the page test will be SKIPPED" >&2
    fi
fi
# Installed means tested: the page test fails, rather than skips, without the browser.
if [ -n "$chromium_bin" ]; then
    export STREAMDIT_REQUIRE_CHROMIUM=1
fi
echo "== cargo fmt --check"
cargo fmt --all -- --check
echo "== cargo clippy"
cargo clippy --workspace --all-targets --locked -- -D warnings
echo "== the library and the CLI against the public API alone (no 'internals' feature)"
cargo clippy -p streamdit -p streamdit-tools --locked -- -D warnings
echo "== cargo test: build every test binary, then run each target timed (tests/run_targets.py)"
if [ "${STREAMDIT_FULL:-}" = "1" ]; then
    echo "tier: full (STREAMDIT_FULL=1: the slow emulator, valgrind and CLI cases too)"
else
    echo "tier: default (STREAMDIT_FULL=1 ./tests/run.sh adds the slow cases; run it before each stop)"
fi
mkdir -p target
cargo test --workspace --locked --no-run --message-format=json-render-diagnostics >target/test-binaries.json
python3 tests/run_targets.py target/test-binaries.json
echo "== doc tests"
cargo test --workspace --locked --doc
