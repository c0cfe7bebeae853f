#!/usr/bin/env bash
# The project's test command: formatting, lints, and every test of the workspace.
# It installs what it needs itself; CI (.ci/run) runs exactly this.
set -euo pipefail
cd "$(dirname "$0")/.."

echo "== nvcc (PyPI wheels into the git-ignored .venv)"
kernels/scripts/install-nvcc.sh
echo "== cargo fmt --check"
cargo fmt --all -- --check
echo "== cargo clippy"
cargo clippy --workspace --all-targets --locked -- -D warnings
echo "== cargo test"
cargo test --workspace --locked
