#!/usr/bin/env bash
# The one command for a GPU machine: runs the prebuilt bundle of tests/gpu-bundle.sh (no
# compiler needed) and writes everything as JSON under OUT:
#   - the CUDA tests against the CPU reference (tests/gpu.rs; the real-device test of
#     tests/cuda_device.rs), with STREAMDIT_REQUIRE_GPU=1 so a missing GPU fails;
#   - `streamdit bench` and `streamdit profile` of every shipped profile on random weights,
#     and `bench --kernels` (our GEMM kernels beside cuBLAS at each profile's shapes),
#     the small ones (tiny, wan-tiny) first;
#   - compute-sanitizer memcheck, racecheck and synccheck on one model call of each profile;
#   - nvidia-smi's view of the GPU.
# Every command has its own timeout, and a step that would not fit in what is left of the
# 8-minute budget is skipped (and listed). OUT/summary.json lists every step with its exit
# status, seconds and log; exit status 0 when no step failed.
#
# usage: tests/gpu.sh [--dry] OUT
#   --dry   the parts that run without a GPU (what CI here can check): the test binaries
#           (they skip without a device), bench and profile of `tiny` on the CPU backend;
#           no sanitizer.
# env:    STREAMDIT_BUNDLE (default gpu-bundle), GPU_SH_BUDGET (seconds, default 470)
set -uo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
cd "$root"

dry=0
if [ "${1:-}" = "--dry" ]; then
    dry=1
    shift
fi
if [ $# -ne 1 ]; then
    echo "usage: tests/gpu.sh [--dry] OUT" >&2
    exit 2
fi
mkdir -p "$1"
out="$(cd "$1" && pwd)"
bundle="${STREAMDIT_BUNDLE:-$root/gpu-bundle}"
budget="${GPU_SH_BUDGET:-470}"
start=$(date +%s)
steps="$out/steps.jsonl"
: >"$steps"
failed=0

if [ ! -x "$bundle/bin/streamdit" ] || [ ! -x "$bundle/tests/gpu" ]; then
    echo "gpu.sh: no bundle at $bundle: build it with tests/gpu-bundle.sh where cargo is" >&2
    exit 2
fi
streamdit="$bundle/bin/streamdit"

# record NAME STATUS SECONDS LOG [NOTE]: one line of steps.jsonl. Names, statuses and notes
# are this script's own words (no quotes or backslashes), so no JSON escaping is needed.
record() {
    printf '{"step":"%s","status":"%s","seconds":%s,"log":"%s","note":"%s"}\n' \
        "$1" "$2" "$3" "$4" "${5:-}" >>"$steps"
}

# step NAME TIMEOUT CMD...: runs CMD with a timeout into OUT/NAME.log, unless it would not
# fit in the budget.
step() {
    local name="$1" limit="$2"
    shift 2
    local now left
    now=$(date +%s)
    left=$((budget - (now - start)))
    if [ "$left" -lt "$limit" ]; then
        echo "-- $name: skipped ($left s left of the budget, needs up to $limit s)"
        record "$name" skipped 0 "" "out of time: $left s left, step limit $limit s"
        return 0
    fi
    echo "-- $name (timeout $limit s)"
    local t0 rc status
    t0=$(date +%s)
    timeout --kill-after=10 "$limit" "$@" >"$out/$name.log" 2>&1
    rc=$?
    case $rc in
        0) status=ok ;;
        124 | 137) status=timeout ;;
        *) status=failed ;;
    esac
    [ "$status" = ok ] || failed=1
    record "$name" "$status" $(($(date +%s) - t0)) "$name.log" "exit $rc"
    echo "   $status (exit $rc, $(($(date +%s) - t0)) s)"
    tail -n 3 "$out/$name.log" | sed 's/^/   | /'
}

skip() {
    echo "-- $1: skipped ($2)"
    record "$1" skipped 0 "" "$2"
}

# A libtest log as JSON: counts and the names of failed tests.
test_json() {
    local log="$1"
    local passed failedn ignored fails
    passed=$(grep -cE '^test .* \.\.\. ok$' "$log")
    failedn=$(grep -cE '^test .* \.\.\. FAILED$' "$log")
    ignored=$(grep -cE '^test .* \.\.\. ignored' "$log")
    fails=$(grep -E '^test .* \.\.\. FAILED$' "$log" | sed -E 's/^test (.*) \.\.\. FAILED$/"\1"/' |
        paste -sd, -)
    printf '{"log":"%s","passed":%s,"failed":%s,"ignored":%s,"failures":[%s]}\n' \
        "$(basename "$log")" "$passed" "$failedn" "$ignored" "$fails"
}

echo "== gpu.sh: bundle $bundle, output $out, budget $budget s$([ $dry = 1 ] && echo ', dry run')"
cp "$bundle/MANIFEST.json" "$out/bundle.json" 2>/dev/null

# The GPU as the driver sees it.
if command -v nvidia-smi >/dev/null; then
    fields=index,uuid,name,driver_version,compute_cap,memory.total,clocks.max.sm
    step nvidia-smi 20 nvidia-smi --query-gpu=$fields --format=csv,noheader
    # One JSON object per GPU, the fields as strings.
    awk -F', ' -v f="$fields" 'BEGIN { n = split(f, k, ","); printf "[" }
        NF == n { printf "%s{", (c++ ? "," : ""); for (i = 1; i <= n; i++)
            printf "%s\"%s\":\"%s\"", (i > 1 ? "," : ""), k[i], $i; printf "}" }
        END { print "]" }' "$out/nvidia-smi.log" >"$out/nvidia-smi.json"
else
    skip nvidia-smi "nvidia-smi not found"
fi

# The CUDA tests against the CPU reference.
if [ $dry = 1 ]; then
    export STREAMDIT_REQUIRE_GPU=0
else
    export STREAMDIT_REQUIRE_GPU=1
fi
step test-gpu 200 "$bundle/tests/gpu" --test-threads=1
[ -f "$out/test-gpu.log" ] && test_json "$out/test-gpu.log" >"$out/test-gpu.json"
step test-cuda-device 60 "$bundle/tests/cuda_device" real_device --test-threads=1
[ -f "$out/test-cuda-device.log" ] && test_json "$out/test-cuda-device.log" >"$out/test-cuda-device.json"

# Profiles: the shipped ones (profiles/*.toml), both families, the small ones first so a
# budget that runs out skips the big ones.
profiles=(tiny wan-tiny)
for f in profiles/*.toml; do
    p="$(basename "$f" .toml)"
    case "$p" in
        tiny | wan-tiny) ;;
        *) profiles+=("$p") ;;
    esac
done
backend=cuda
calls=(--warmup 2 --steps 10)
if [ $dry = 1 ]; then
    profiles=(tiny)
    backend=cpu
    calls=(--warmup 0 --steps 2)
fi

for p in "${profiles[@]}"; do
    step "bench-$p" 90 "$streamdit" bench --profile "$p" --random-weights 1 --backend "$backend" \
        "${calls[@]}" --json "$out/bench-$p.json"
    step "profile-$p" 60 "$streamdit" profile --profile "$p" --random-weights 1 --backend "$backend" \
        --json "$out/profile-$p.json"
done

# cuBLAS for `bench --kernels` is loaded at run time by name: where the library path lacks it,
# use the CUDA toolkit's or the one the image's PyTorch wheels carry (site-packages/nvidia/...).
if ! ldconfig -p 2>/dev/null | grep -q 'libcublas\.so'; then
    cublas_dir=""
    for d in /usr/local/cuda/lib64 /usr/local/cuda/targets/x86_64-linux/lib; do
        if ls "$d"/libcublas.so* >/dev/null 2>&1; then
            cublas_dir="$d"
            break
        fi
    done
    if [ -z "$cublas_dir" ] && command -v python3 >/dev/null; then
        cublas_dir="$(python3 -c '
import glob, os, site
roots = site.getsitepackages() + [site.getusersitepackages()]
hits = [h for r in roots for h in sorted(glob.glob(os.path.join(r, "nvidia", "*", "lib", "libcublas.so*")))]
print(os.path.dirname(hits[0]) if hits else "")' 2>/dev/null)"
    fi
    if [ -n "$cublas_dir" ]; then
        echo "-- cuBLAS from $cublas_dir"
        export LD_LIBRARY_PATH="$cublas_dir${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
    else
        echo "-- cuBLAS not found: bench --kernels compares our kernels only"
    fi
fi

# Our GEMM kernels (mma.sync, and sm_90a on compute capability 9.0) beside cuBLAS at every
# linear shape of each profile's call (`bench --kernels`; cuBLAS only where libcublas loads).
# The dry run checks the command on the emulator at one small shape.
for p in "${profiles[@]}"; do
    if [ $dry = 1 ]; then
        step "kernels-$p" 120 "$streamdit" bench --kernels --profile "$p" --backend emu \
            --kernel-shapes 128x64x64 --kernel-reps 1 --json "$out/kernels-$p.json"
    else
        step "kernels-$p" 90 "$streamdit" bench --kernels --profile "$p" --backend cuda \
            --kernel-reps 20 --json "$out/kernels-$p.json"
    fi
done

# compute-sanitizer on one call of each profile (`profile` with no warm-up call runs one
# prefill call eagerly), smallest profile first.
sanitizer=""
for c in compute-sanitizer /usr/local/cuda/bin/compute-sanitizer /usr/local/cuda-*/bin/compute-sanitizer \
    /opt/nvidia/*/compute-sanitizer/compute-sanitizer; do
    if command -v "$c" >/dev/null 2>&1; then
        sanitizer="$(command -v "$c")"
        break
    fi
done
for p in "${profiles[@]}"; do
    for tool in memcheck racecheck synccheck; do
        if [ $dry = 1 ]; then
            skip "sanitize-$tool-$p" "dry run"
        elif [ -z "$sanitizer" ]; then
            skip "sanitize-$tool-$p" "compute-sanitizer not found"
        else
            step "sanitize-$tool-$p" 60 "$sanitizer" --tool "$tool" --error-exitcode 9 \
                --print-limit 20 "$streamdit" profile --profile "$p" --random-weights 1 \
                --backend cuda --warmup 0
        fi
    done
done

# summary.json: every step, in order.
{
    printf '{"dry":%s,"seconds":%s,"failed":%s,"steps":[' \
        "$([ $dry = 1 ] && echo true || echo false)" $(($(date +%s) - start)) \
        "$([ $failed = 1 ] && echo true || echo false)"
    paste -sd, "$steps"
    printf ']}\n'
} >"$out/summary.json"
echo "== gpu.sh: $(($(date +%s) - start)) s, summary in $out/summary.json"
exit $failed
