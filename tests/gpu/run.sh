#!/bin/sh
# GPU checks and benchmark of the NN engine, for a machine with one NVIDIA GPU (sized to
# finish within 4 minutes on an H200). Runs from a plain copy of the working tree plus the
# folder `make gpu-bundle` made on the build machine (the check program and the Debian
# libraries it needs); CUDA's libraries come from the GPU machine (PyTorch's wheels or the
# toolkit). Needs python3 with torch and torchvision for the side-by-side benchmark.
#
# Checks: every op against the CPU backend (fp32; bf16 and fp16 convolutions against the
# CPU's fp32 with limits from the formats' precision; loss scaling's unscale and overflow
# flag; uploads through the copy stream), the models, short training runs (fp32, bf16, and
# fp16 with dynamic loss scaling, against the CPU in fp32), the sequence model (logits, loss,
# gradients, 5 Adam steps against the CPU, fp32 and bf16), the gradient all-reduce of
# bench/mpi_bench.c on the GPU with one rank (issue 9's N=1 overhead), then the benchmark
# (ResNeXt images/s; the sequence model's slices/s against PyTorch's nn.LSTM).
#
#   sh tests/gpu/run.sh [BUNDLE]          default BUNDLE: build/gpu-bundle
#
# Environment: GPU_BENCH_SIZE (480), GPU_BENCH_BATCH (16), GPU_BENCH_ITERS (4),
# GPU_SKIP_BENCH=1 (parity only), GPU_BENCH_FP16=1 (the engine in fp16 too), PY (python3).
# Results also go to $OUT/gpu_results.txt when OUT names a folder. Exit 0 when every check
# passed, 1 otherwise (no usable GPU: 1, saying so, nothing checked).
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

# The bundle's Debian libraries, unpacked from its archive into the scratch folder.
"$PY" -c 'import sys, tarfile; tarfile.open(sys.argv[1]).extractall(sys.argv[2])' \
    "$bundle/lib.tar.xz" "$scratch" || {
    say "cannot unpack $bundle/lib.tar.xz"
    exit 1
}
cuda_dirs=$("$PY" tests/gpu/cuda_libs.py)
lib_path="$scratch/lib${cuda_dirs:+:$cuda_dirs}"
# PyTorch runs with the machine's own libraries, not this build's Debian ones (libstdc++,
# libgomp, libz) that the bundle puts first for the engine.
machine_lib_path=${LD_LIBRARY_PATH:-}
export LD_LIBRARY_PATH="$lib_path${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
say "libraries: $LD_LIBRARY_PATH"
if ldd "$bundle/bin/gpu_parity" "$bundle/bin/libichpipe_cuda.so" | grep "not found" |
    tee -a "$results" | grep -q .; then
    say "libraries missing: see above"
    exit 1
fi
prog=$bundle/bin/gpu_parity

# No usable GPU (no driver, no device): say so once and stop, instead of failing every step.
if ! "$prog" --device cuda >"$scratch/probe" 2>&1; then
    say "no usable GPU here, nothing checked: $(tail -n 1 "$scratch/probe")"
    exit 1
fi

step "ops, gpu vs cpu" 120 "$prog" --device cuda --ops
step "tiny model, gpu vs cpu" 120 "$prog" --device cuda --model tiny --batch 4 --size 64
step "resnext50_32x4d, gpu vs cpu" 150 "$prog" --device cuda --model resnext50_32x4d \
    --batch 2 --size 64 --limit-grads 5e-3
step "training, gpu vs cpu" 120 "$prog" --device cuda --train 10
step "training bf16 gpu vs fp32 cpu" 60 "$prog" --device cuda --train 10 --precision bf16
step "training fp16 (loss scaling) gpu vs fp32 cpu" 60 "$prog" --device cuda --train 10 \
    --precision fp16
step "sequence model, gpu vs cpu (fp32, bf16; both paddings; 5 Adam steps)" 60 "$prog" \
    --device cuda --seq
step "lstmtrain --device cuda against cpu, resume, bf16" 90 "$PY" tests/gpu/lstmtrain_gpu.py \
    "$bundle/bin/lstmtrain" "$scratch"

# The all-reduce of cnntrain's step with one rank on the GPU. The GPU image has no OpenMPI:
# the bundle carries its libraries but not mpirun, so without one mpi_bench runs as a single
# process, which dist.c treats exactly as `mpirun -np 1` (no MPI_Init; one rank). With one
# rank dist.c skips the collective (path=none), so this measures the call's own overhead;
# NCCL itself runs from two GPUs on.
nccl_bench=$bundle/bin/mpi_bench
if [ ! -x "$nccl_bench" ]; then
    say "== all-reduce N=1: skipped (the bundle has no mpi_bench: a build without MPI)"
elif ldd "$nccl_bench" | grep -q "not found"; then
    say "== all-reduce N=1: skipped, libraries missing:"
    ldd "$nccl_bench" | grep "not found" | tee -a "$results"
elif command -v mpirun >/dev/null 2>&1; then
    step "all-reduce N=1 (mpirun -np 1)" 60 env OMPI_ALLOW_RUN_AS_ROOT=1 \
        OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1 mpirun -np 1 "$nccl_bench" allreduce \
        resnext101_32x8d 5 cuda
else
    say "(no mpirun on this machine: mpi_bench runs as one process, the same as -np 1)"
    step "all-reduce N=1 (one process)" 60 "$nccl_bench" allreduce resnext101_32x8d 5 cuda
fi

if [ "${GPU_SKIP_BENCH:-0}" != 1 ]; then
    # The sequence model first (the shorter part), at the method's shapes (train batch 4,
    # eval 16, 40 slices).
    for precision in fp32 bf16; do
        step "engine seqmodel $precision" 40 "$prog" --device cuda --seq-bench \
            --iters "$iters" --precision "$precision"
    done
    step "pytorch seqmodel (nn.LSTM)" 60 env LD_LIBRARY_PATH="$machine_lib_path" \
        "$PY" tests/gpu/bench_torch.py --seq --iters "$iters"
    for precision in fp32 bf16 ${GPU_BENCH_FP16:+fp16}; do
        step "engine resnext101_32x8d $precision" 200 "$prog" --device cuda \
            --bench resnext101_32x8d --size "$size" --batch "$batch" --iters "$iters" \
            --precision "$precision"
    done
    step "pytorch resnext101_32x8d bf16" 200 env LD_LIBRARY_PATH="$machine_lib_path" \
        "$PY" tests/gpu/bench_torch.py --flops --size "$size" --batch "$batch" \
        --iters "$iters" --precision bf16
    step "pytorch resnext101_32x8d fp32" 200 env LD_LIBRARY_PATH="$machine_lib_path" \
        "$PY" tests/gpu/bench_torch.py --size "$size" --batch "$batch" --iters "$iters" \
        --precision fp32
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
