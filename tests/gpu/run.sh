#!/bin/sh
# GPU checks and benchmark of the NN engine, for a machine with one NVIDIA GPU (sized to
# finish within 4 minutes on an H200). Runs from a plain copy of the working tree plus the
# folder `make gpu-bundle` made on the build machine (the check program and the Debian
# libraries it needs); CUDA's libraries come from the GPU machine (PyTorch's wheels or the
# toolkit). Needs python3 with torch and torchvision for the side-by-side benchmark.
#
#   sh tests/gpu/run.sh [BUNDLE]          default BUNDLE: build/gpu-bundle
#
# Environment: GPU_BENCH_SIZE (480), GPU_BENCH_BATCH (16), GPU_BENCH_ITERS (4),
# GPU_SKIP_BENCH=1 (parity only), PY (python3). Results also go to $OUT/gpu_results.txt
# when OUT names a folder. Exit 0 when every check passed, 1 otherwise.
set -u
cd "$(dirname "$0")/../.." || exit 1
bundle=${1:-build/gpu-bundle}
PY=${PY:-python3}
size=${GPU_BENCH_SIZE:-480}
batch=${GPU_BENCH_BATCH:-16}
iters=${GPU_BENCH_ITERS:-4}
results=${OUT:-$(mktemp -d)}/gpu_results.txt
scratch=$(mktemp -d)
trap 'rm -rf "$scratch"' EXIT
: >"$results"
failed=""
begin=$(date +%s)

say() {
    echo "$*" | tee -a "$results"
}

# step NAME SECONDS COMMAND...: run with a time limit, keep its output, note a failure.
step() {
    name=$1 limit=$2
    shift 2
    say "== $name"
    t0=$(date +%s)
    timeout "$limit" "$@" >"$scratch/out" 2>&1
    rc=$?
    tee -a "$results" <"$scratch/out"
    say "-- $name: exit $rc, $(($(date +%s) - t0)) s"
    [ $rc -eq 0 ] || failed="$failed $name"
}

say "gpu checks: $(date -u +%Y-%m-%dT%H:%M:%SZ), tree $(git describe --always --dirty \
2>/dev/null || echo '(no git)'), load: $(uptime | sed 's/.*load average: //')"
nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.max.sm --format=csv,noheader \
    2>&1 | tee -a "$results"
[ -x "$bundle/bin/gpu_parity" ] || {
    say "no $bundle/bin/gpu_parity: run 'make gpu-bundle' on the build machine and carry it"
    exit 1
}
head -n 1 "$bundle/MANIFEST" | tee -a "$results"

cuda_dirs=$("$PY" tests/gpu/cuda_libs.py)
export LD_LIBRARY_PATH="$PWD/$bundle/lib${cuda_dirs:+:$cuda_dirs}${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
say "libraries: $LD_LIBRARY_PATH"
if ldd "$bundle/bin/gpu_parity" "$bundle/bin/libichpipe_cuda.so" | grep "not found" |
    tee -a "$results" | grep -q .; then
    say "libraries missing: see above"
    exit 1
fi
prog=$bundle/bin/gpu_parity

step "ops, gpu vs cpu" 120 "$prog" --device cuda --ops
step "tiny model, gpu vs cpu" 120 "$prog" --device cuda --model tiny --batch 4 --size 64
step "resnext50_32x4d, gpu vs cpu" 150 "$prog" --device cuda --model resnext50_32x4d \
    --batch 2 --size 64 --limit-grads 5e-3
step "training, gpu vs cpu" 120 "$prog" --device cuda --train 10

if [ "${GPU_SKIP_BENCH:-0}" != 1 ]; then
    for precision in fp32 bf16; do
        step "engine resnext101_32x8d $precision" 200 "$prog" --device cuda \
            --bench resnext101_32x8d --size "$size" --batch "$batch" --iters "$iters" \
            --precision "$precision"
    done
    step "pytorch resnext101_32x8d bf16" 200 "$PY" tests/gpu/bench_torch.py --flops \
        --size "$size" --batch "$batch" --iters "$iters" --precision bf16
    step "pytorch resnext101_32x8d fp32" 200 "$PY" tests/gpu/bench_torch.py \
        --size "$size" --batch "$batch" --iters "$iters" --precision fp32
    "$PY" tests/gpu/summary.py "$results" | tee "$scratch/summary"
    cat "$scratch/summary" >>"$results"
    # Where the engine's training step spends its time, if the 4 minutes allow.
    if [ $(($(date +%s) - begin)) -lt 170 ]; then
        step "engine profile fp32 train" 60 "$prog" --device cuda --bench resnext101_32x8d \
            --size "$size" --batch "$batch" --iters 1 --profile
    else
        say "(profile skipped: the 4 minutes are nearly spent)"
    fi
fi

say "gpu checks took $(($(date +%s) - begin)) s; failed:${failed:- none}"
[ -z "$failed" ]
