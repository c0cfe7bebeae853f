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
echo "== cargo fmt --check"
cargo fmt --all -- --check
echo "== cargo clippy"
cargo clippy --workspace --all-targets --locked -- -D warnings
echo "== the library and the CLI against the public API alone (no 'internals' feature)"
cargo clippy -p streamdit -p streamdit-tools --locked -- -D warnings
echo "== cargo test"
cargo test --workspace --locked
