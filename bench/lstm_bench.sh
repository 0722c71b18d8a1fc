#!/bin/sh
# The stage-5 sequence model (common/nn/seqmodel.h) against Debian's PyTorch on the method's
# shapes (embeddings 2048 wide, so 6144 LSTM inputs; hidden 2048; series of 40 slices):
# training slices/s at batch 4 (forward, loss, backward, Adam) and inference slices/s at
# batch 16 (forward), and each process's peak resident memory. Both sides on the same
# threads (OMP_NUM_THREADS, 2 by default).
#
# Each measurement is its own process, REPS rounds alternating PyTorch and the engine in each
# of PRECISIONS (fp32: all fp32; bf16: the engine's mixed precision, against the same fp32
# PyTorch); the best round of each side counts; the table gives engine / PyTorch. The load
# average is printed before and after and in every engine line: the machine is shared,
# compare ratios rather than rates. Then the recurrence's products alone (lstm_bench
# products, per-call medians, fp32 against bf16), which a loaded machine disturbs less.
#
#   sh bench/lstm_bench.sh   (EMB=2048 HIDDEN=2048 STEPS=40 TRAIN_BATCH=4 EVAL_BATCH=16
#                             REPS=1 ITERS=1 THREADS=2 PRECISIONS="fp32 bf16" BUILD=build
#                             MODES="train eval"
#                             PY=/usr/bin/python3)
#
# PyTorch's side needs an optimised BLAS to be a fair baseline: Debian's OpenBLAS
# (libopenblas0-pthread, which becomes the libblas.so.3 alternative); the script warns
# otherwise.
#
# The C driver (bench/lstm_bench.c) is compiled here against $BUILD/libichpipe.a; run `make`
# first. Needs about 5 GB of memory (PyTorch and the engine each hold the 268 M parameters,
# their gradients and Adam moments in fp32).
set -eu
root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"
BUILD=${BUILD:-build}
PY=${PY:-/usr/bin/python3}
EMB=${EMB:-2048}
HIDDEN=${HIDDEN:-2048}
STEPS=${STEPS:-40}
TRAIN_BATCH=${TRAIN_BATCH:-4}
EVAL_BATCH=${EVAL_BATCH:-16}
REPS=${REPS:-1}
ITERS=${ITERS:-1}
MODES=${MODES:-train eval}
PRECISIONS=${PRECISIONS:-fp32 bf16}
OMP_NUM_THREADS=${THREADS:-2}
export OMP_NUM_THREADS PYTHONNOUSERSITE=1 PYTHONDONTWRITEBYTECODE=1

if [ ! -f "$BUILD/libichpipe.a" ] || [ ! -f "$BUILD/config.mk" ]; then
    echo "lstm bench: $BUILD/libichpipe.a is missing: run make first" >&2
    exit 1
fi
if ! "$PY" -c 'import torch' 2>/dev/null; then
    echo "lstm bench: $PY has no torch, nothing to compare with"
    exit 0
fi
work=$(mktemp -d "${TMPDIR:-/tmp}/lstm-bench.XXXXXX")
trap 'rm -rf "$work"' EXIT

# Every library the archive may need, as config.mk found them.
libs=$(sed -n 's/^[A-Z0-9]*_LIBS = //p' "$BUILD/config.mk")
${CC:-cc} -std=c11 -O2 -g -Wall -Wextra -D_GNU_SOURCE -pthread -Icommon \
    $(sed -n 's/^HDF5_CFLAGS = //p' "$BUILD/config.mk") -c bench/lstm_bench.c \
    -o "$work/lstm_bench.o"
# shellcheck disable=SC2086
${CXX:-c++} -pthread "$work/lstm_bench.o" "$BUILD/libichpipe.a" -o "$work/lstm_bench" $libs -lm

# PyTorch's linear layers and LSTM run on the system BLAS (Debian's torch has no own GEMM):
# the reference netlib one is about 40x slower than OpenBLAS here, so say which one it is.
blas=$(readlink -f /usr/lib/x86_64-linux-gnu/libblas.so.3 2>/dev/null || echo unknown)
case $blas in
*openblas*) ;;
*) echo "lstm bench: warning: PyTorch runs on $blas, not OpenBLAS" \
    "(apt-get install libopenblas0-pthread for a fair baseline)" ;;
esac
echo "lstm bench: PyTorch BLAS $blas"
echo "lstm bench: emb $EMB, hidden $HIDDEN, $STEPS slices a series, train batch" \
    "$TRAIN_BATCH, eval batch $EVAL_BATCH, $OMP_NUM_THREADS threads, $REPS rounds of $ITERS" \
    "iterations; load before: $(cut -d' ' -f1-3 /proc/loadavg)"
log=$work/results.txt
for mode in $MODES; do
    batch=$TRAIN_BATCH
    [ "$mode" = eval ] && batch=$EVAL_BATCH
    round=1
    while [ "$round" -le "$REPS" ]; do
        "$PY" bench/lstm_bench_ref.py "$mode" "$EMB" "$HIDDEN" "$batch" "$STEPS" "$ITERS" |
            tee -a "$log"
        for precision in $PRECISIONS; do
            "$work/lstm_bench" "$mode" "$EMB" "$HIDDEN" "$batch" "$STEPS" "$ITERS" \
                "$precision" | tee -a "$log"
        done
        round=$((round + 1))
    done
done
echo "load after: $(cut -d' ' -f1-3 /proc/loadavg)"
"$work/lstm_bench" products "$TRAIN_BATCH" "$HIDDEN" 20
"$work/lstm_bench" products "$EVAL_BATCH" "$HIDDEN" 10

# The best round of each side per mode (and precision), and engine / PyTorch.
awk '
{
    side = $1; mode = $2
    for (i = 3; i <= NF; i++) { split($i, kv, "="); v[kv[1]] = kv[2] }
    if (side == "engine")
        side = "engine " v["precision"]
    key = side " " mode
    if (!(key in rate) || v["slices_per_s"] > rate[key]) {
        rate[key] = v["slices_per_s"]; mem[key] = v["peak_rss_mib"]
    }
}
END {
    printf "| mode | precision | PyTorch slices/s | engine slices/s | ratio | PyTorch MiB |"
    printf " engine MiB |\n|---|---|---|---|---|---|---|\n"
    split("train eval", modes, " ")
    split("fp32 bf16", precisions, " ")
    for (k = 1; k <= 2; k++)
        for (p = 1; p <= 2; p++) {
            m = modes[k]; e = "engine " precisions[p] " " m
            if (!(("torch " m) in rate) || !(e in rate))
                continue
            printf "| %s | %s | %.1f | %.1f | %.2fx | %d | %d |\n", m, precisions[p],
                rate["torch " m], rate[e], rate[e] / rate["torch " m], mem["torch " m], mem[e]
        }
}' "$log"
