#!/usr/bin/env bash
# Installs a CUDA 13 nvcc from NVIDIA's PyPI wheels into <repo>/.venv (git-ignored) and
# prints the path of nvcc. Idempotent: when the pinned wheels are already there it only
# checks that nvcc runs, which takes well under a second.
#
# Why 13.0: the embedded images must load on the oldest CUDA 13 driver (13.0, branch R580,
# the driver of the H100/H200 machines the kernels are checked on). Cubins from any 13.x
# toolkit would (minor-version compatibility), but the fallback PTX is JIT-compiled by the
# driver, which accepts only PTX ISA versions it knows: nvcc 13.0 writes `.version 9.0`, the
# newest a 13.0 driver JITs, where nvcc 13.5 writes 9.5 (CUDA_ERROR_UNSUPPORTED_PTX_VERSION
# on R580). One pinned toolchain for cubins and PTX; its ptxas reports match 13.5.37's
# (registers equal on every kernel but one, which needs fewer). cuobjdump and nvdisasm only
# read cubins and have no 13.0 wheels (the oldest is 13.2.51), so they stay at 13.5.37.
# kernels/tests/nvcc_gates.rs fails when the embedded PTX is newer than ISA 9.0.
#
# Recipe (checked with nvcc 13.0.88 on x86_64 Debian 12, gcc 12):
#   The wheels unpack into one CUDA tree, <venv>/lib/python3.X/site-packages/nvidia/cu13:
#     bin/nvcc bin/ptxas bin/cudafe++ bin/fatbinary bin/nvlink  (nvidia-cuda-nvcc)
#     bin/cuobjdump                                            (nvidia-cuda-cuobjdump)
#     bin/nvdisasm   (cuobjdump -sass runs it)                 (nvidia-cuda-nvdisasm)
#     nvvm/bin/cicc nvvm/libdevice  lib/libnvvm.so.4           (nvidia-nvvm)
#     include/crt/*  (host_defines.h, ...)                     (nvidia-cuda-crt)
#     include/cuda_fp16.h cuda_bf16.h cuda_runtime.h lib/      (nvidia-cuda-runtime)
#     include/cccl/{cuda,cub,thrust}                           (nvidia-cuda-cccl)
#   bin/nvcc.profile, shipped in the wheel, resolves everything relative to bin/:
#   CICC_PATH=../nvvm/bin, NVVMIR_LIBRARY_DIR=../nvvm/libdevice, -I../include,
#   -isystem ../include/cccl. So no -I, --nvvmdir, NVVM variable or symlink is needed:
#   run nvcc by its real path (not through a symlink in another directory, or _HERE_
#   in nvcc.profile points elsewhere). The host compiler is the gcc/g++ on PATH; set
#   NVCC_CCBIN (read by nvcc itself) to pick another one. Generating PTX still runs the
#   host preprocessor, so a C++ compiler is required.
#
#   nvcc --ptx -arch=sm_80 -std=c++17 -I kernels/cuda x.cu -o x.ptx
#   ptxas -v -arch=sm_86 x.ptx -o x.sm_86.cubin     (per target arch: kernels/src/arch.rs)
set -euo pipefail

NVCC_VERSION=13.0.88  # nvidia-cuda-{nvcc,crt,runtime}, nvidia-nvvm
CCCL_VERSION=13.0.85  # nvidia-cuda-cccl is versioned on its own
TOOLS_VERSION=13.5.37  # nvidia-cuda-{cuobjdump,nvdisasm}: cubin readers, no 13.0 wheels

repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
venv="${STREAMDIT_VENV:-$repo/.venv}"
py="${PYTHON:-python3}"

find_nvcc() {
    local f
    for f in "$venv"/lib/python3*/site-packages/nvidia/cu13/bin/nvcc; do
        [ -x "$f" ] && { echo "$f"; return 0; }
    done
    return 1
}

wanted=(
    "nvidia-cuda-nvcc==$NVCC_VERSION"
    "nvidia-cuda-crt==$NVCC_VERSION"
    "nvidia-nvvm==$NVCC_VERSION"
    "nvidia-cuda-runtime==$NVCC_VERSION"
    "nvidia-cuda-cuobjdump==$TOOLS_VERSION"
    "nvidia-cuda-nvdisasm==$TOOLS_VERSION"
    "nvidia-cuda-cccl==$CCCL_VERSION"
)
# The stamp names the exact package set, so changing a pin reinstalls.
stamp="$venv/.streamdit-nvcc-$(printf '%s\n' "${wanted[@]}" | sha256sum | cut -c1-16)"

if [ -f "$stamp" ] && nvcc="$(find_nvcc)" && "$nvcc" --version >/dev/null 2>&1; then
    echo "$nvcc"
    exit 0
fi

if [ ! -x "$venv/bin/python" ]; then
    "$py" -m venv "$venv" >&2
fi
"$venv/bin/python" -m pip install --quiet --disable-pip-version-check "${wanted[@]}" >&2

nvcc="$(find_nvcc)" || { echo "install-nvcc: nvcc not found under $venv after install" >&2; exit 1; }

# Smoke test: PTX for sm_80 (ISA 9.0) and ptxas for each target arch, sm_90a from its own PTX.
tmp="$(mktemp -d)"
trap 'rm -rf "$tmp"' EXIT
cat >"$tmp/smoke.cu" <<'CU'
#include <cuda_fp16.h>
extern "C" __global__ void smoke(const __half* x, float* y) {
    y[threadIdx.x] = __half2float(x[threadIdx.x]) * 2.0f;
}
CU
bin="$(dirname "$nvcc")"
"$nvcc" --ptx -arch=sm_80 -std=c++17 "$tmp/smoke.cu" -o "$tmp/smoke.ptx" >&2
grep -q '^\.version 9\.0$' "$tmp/smoke.ptx" || {
    echo "install-nvcc: $nvcc does not write PTX ISA 9.0: $(grep '^\.version' "$tmp/smoke.ptx")" >&2
    exit 1
}
for arch in sm_80 sm_86 sm_89 sm_90; do
    "$bin/ptxas" -arch=$arch "$tmp/smoke.ptx" -o "$tmp/smoke.$arch.cubin" >&2
done
"$nvcc" --ptx -arch=sm_90a -std=c++17 "$tmp/smoke.cu" -o "$tmp/smoke90a.ptx" >&2
"$bin/ptxas" -arch=sm_90a "$tmp/smoke90a.ptx" -o "$tmp/smoke.sm_90a.cubin" >&2
"$bin/cuobjdump" -sass "$tmp/smoke.sm_90.cubin" >/dev/null

touch "$stamp"
# A build that ran before nvcc existed recorded "kernels not built"; make cargo rerun
# kernels/build.rs (its content is unchanged, only the mtime).
touch -c "$repo/kernels/build.rs" 2>/dev/null || true
echo "$nvcc"
