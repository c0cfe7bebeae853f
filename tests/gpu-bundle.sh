#!/usr/bin/env bash
# Builds what tests/gpu.sh runs on a GPU machine that has a driver but no Rust toolchain:
# the test binaries of the CUDA paths (`cargo test --no-run`) and the release `streamdit`,
# with debug info stripped, copied into the git-ignored folder gpu-bundle/ (or $1), with a
# MANIFEST.json saying what was built from which commit. Carry that folder with the working
# tree (it must stay under 64 MiB: the script fails if it does not) and run
# `tests/gpu.sh OUT` there.
#
# The kernels must be built with nvcc (kernels/scripts/install-nvcc.sh installs the pinned
# 13.0 toolchain into .venv): a bundle without cubins could only test the CPU, so the
# script refuses to make one.
set -euo pipefail
cd "$(dirname "$0")/.."

bundle="${1:-gpu-bundle}"
# Test targets of the root package that drive the real device (the others run the
# emulator and the CPU, which the ordinary test suite covers).
tests=(gpu cuda_device)
limit=$((64 * 1024 * 1024))

# Where kernels/build.rs looks for nvcc, in its order.
nvcc=""
for c in "${STREAMDIT_NVCC:-}" "${CUDA_HOME:+$CUDA_HOME/bin/nvcc}" "${CUDA_PATH:+$CUDA_PATH/bin/nvcc}" \
    "$(command -v nvcc || true)" .venv/lib/*/site-packages/nvidia/cu13/bin/nvcc; do
    if [ -n "$c" ] && [ -f "$c" ]; then
        nvcc="$c"
        break
    fi
done
if [ -z "$nvcc" ]; then
    echo "gpu-bundle: no nvcc (run kernels/scripts/install-nvcc.sh): the kernels would not be built" >&2
    exit 1
fi

echo "== test binaries: ${tests[*]}"
targets=()
for t in "${tests[@]}"; do targets+=(--test "$t"); done
msgs="$(mktemp)"
trap 'rm -f "$msgs"' EXIT
cargo test -p streamdit-suite --locked --no-run "${targets[@]}" --message-format=json \
    >"$msgs"
echo "== streamdit (release)"
cargo build -p streamdit-tools --locked --release --bin streamdit

rm -rf "$bundle"
mkdir -p "$bundle/tests" "$bundle/bin"
for t in "${tests[@]}"; do
    exe="$(jq -r --arg t "$t" 'select(.reason == "compiler-artifact" and .target.name == $t
        and (.target.kind | index("test")) and .executable != null) | .executable' "$msgs" | tail -n 1)"
    if [ -z "$exe" ] || [ ! -x "$exe" ]; then
        echo "gpu-bundle: cargo reported no executable for test target $t" >&2
        exit 1
    fi
    strip --strip-debug -o "$bundle/tests/$t" "$exe"
done
strip --strip-debug -o "$bundle/bin/streamdit" target/release/streamdit

# The kernels the binaries embed: refuse a bundle whose build skipped nvcc.
if ! STREAMDIT_REQUIRE_KERNELS=1 "$bundle/tests/gpu" --exact kernels_are_embedded >/dev/null; then
    echo "gpu-bundle: the kernels were not built with nvcc (see: $bundle/tests/gpu --exact kernels_are_embedded --nocapture)" >&2
    exit 1
fi
"$bundle/bin/streamdit" --version

size=$(du -cb "$bundle" | tail -n 1 | cut -f1)
files=$(cd "$bundle" && find . -type f -printf '%P\t%s\n' | sort |
    jq -R -s 'split("\n") | map(select(length > 0) | split("\t") | {path: .[0], bytes: (.[1] | tonumber)})')
jq -n --arg commit "$(git rev-parse HEAD)" \
    --arg dirty "$(git status --porcelain --untracked-files=no | head -c 1)" \
    --arg built "$(date -u +%Y-%m-%dT%H:%M:%SZ)" \
    --arg host "$(uname -srm)" \
    --arg nvcc "$("$nvcc" --version | tail -n 2 | tr '\n' ' ')" \
    --argjson files "$files" --argjson bytes "$size" \
    '{commit: $commit, dirty: ($dirty != ""), built: $built, host: $host, nvcc: $nvcc,
      bytes: $bytes, files: $files}' >"$bundle/MANIFEST.json"
echo "== $bundle: $((size / 1024 / 1024)) MiB"
cat "$bundle/MANIFEST.json"
if [ "$size" -ge "$limit" ]; then
    echo "gpu-bundle: $size bytes, over the 64 MiB that can be carried" >&2
    exit 1
fi
