#!/bin/sh
# Data-parallel training over MPI against PyTorch's torch.distributed (gloo), side by side in
# one run, processes on this host only:
#  1. the gradient all-reduce of one optimizer step at ResNeXt-101 32x8d's size (86.75 M
#     floats with the 6-output head), 2 ranks: common/dist.c (MPI_Allreduce in 64 MiB
#     buckets, bench/mpi_bench.c) against torch.distributed.all_reduce;
#  2. training images/s on 2 cores: 1 rank x 2 threads against 2 ranks x 1 thread, the same
#     global batch (micro-batches of BATCH / 2 either way): cnntrain on phantom JPEGs (its
#     rate includes reading and augmenting the images) and torchvision on random tensors.
# Ratios: torch time / ours for the all-reduce (above 1: ours is faster); for training the
# scaling 2 ranks / 1 rank of each side. The machine is shared: the load is printed.
#
#   sh bench/mpi_bench.sh   (RANKS=2 ITERS=5 MODEL=resnext50_32x4d SIZE=64 BATCH=8
#                            STEPS_SERIES=8 BUILD=build BIN=bin PY=/usr/bin/python3)
set -eu
root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"
BUILD=${BUILD:-build}
BIN=${BIN:-bin}
PY=${PY:-/usr/bin/python3}
ITERS=${ITERS:-5}
MODEL=${MODEL:-resnext50_32x4d}
SIZE=${SIZE:-64}
BATCH=${BATCH:-8}
STEPS_SERIES=${STEPS_SERIES:-8}
export PYTHONNOUSERSITE=1 PYTHONDONTWRITEBYTECODE=1
export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1 OMPI_MCA_btl=self,vader \
    OMPI_MCA_oob_tcp_if_include=lo

config() { sed -n "s/^$1 = //p" "$BUILD/config.mk"; }
if [ ! -f "$BUILD/libichpipe.a" ] || ! command -v mpirun >/dev/null ||
    [ "$(config HAVE_MPI)" != 1 ]; then
    echo "mpi bench: needs mpirun and a build with MPI ($BUILD/config.mk); run make first"
    exit 0
fi
work=$(mktemp -d "${TMPDIR:-/tmp}/mpi-bench.XXXXXX")
trap 'rm -rf "$work"' EXIT
cc=${CC:-cc}
cxx=${CXX:-c++}
$cc -std=c11 -O2 -g -Wall -Wextra -D_GNU_SOURCE -pthread -Icommon $(config HDF5_CFLAGS) \
    -c bench/mpi_bench.c -o "$work/mpi_bench.o"
$cxx -pthread -rdynamic "$work/mpi_bench.o" "$BUILD/libichpipe.a" -o "$work/mpi_bench" \
    $(config DCMTK_LIBS) $(config HDF5_LIBS) $(config JPEG_LIBS) $(config ZLIB_LIBS) \
    $(config DNNL_LIBS) $(config MPI_LIBS) -Wl,--as-needed $(config NCCL_LIBS) \
    $(config CUDA_LIBS) -lm

log=$work/results.txt
echo "mpi bench: load before: $(cut -d' ' -f1-3 /proc/loadavg)"
echo "== all-reduce of ResNeXt-101 32x8d's gradients, 2 ranks, best of $ITERS"
OMP_NUM_THREADS=1 mpirun --oversubscribe -np 2 "$work/mpi_bench" allreduce resnext101_32x8d \
    "$ITERS" | tee -a "$log"
floats=$(sed -n 's/.*side=ours.*floats=\([0-9]*\).*/\1/p' "$log")
mkdir -p "$work/gloo"
"$PY" bench/mpi_bench_ref.py allreduce 2 "$floats" "$ITERS" "$work/gloo" | tee -a "$log"

echo "== training images/s, $MODEL, ${SIZE} px, global batch $BATCH"
ph=$work/phantom
"$BIN/mkphantom" -q -o "$ph" --series "$STEPS_SERIES" --slices 10-10 --size "$SIZE" --seed 3 \
    -j 2
"$BIN/dcm2jpg" -q -j 2 -o "$work/jpg" "$ph"
"$BIN/mkfolds" -q -o "$work/folds.h5" "$ph/labels.csv" "$work/jpg/meta.h5"
# cnntrain's rate: its best step (a progress line per step), the first one left out; the
# machine is shared, so both sides report their best step.
ours_rate() {
    sed -n 's/.* \([0-9.]*\) img\/s.*/\1/p' "$1" |
        awk 'NR > 1 && $1 > best { best = $1 } END { printf "%.3f", best }'
}
train() {
    "$@" "$BIN/cnntrain" --arch "$MODEL" --size "$SIZE" --batch "$BATCH" \
        --micro-batch $((BATCH / 2)) --fold -1 --epochs 1 --log-every 1 -j 1 \
        -o "$work/ckpt-$ranks" "$work/jpg" "$work/folds.h5"
}
for ranks in 1 2; do
    threads=$((2 / ranks))
    if [ "$ranks" = 1 ]; then
        OMP_NUM_THREADS=2 train >"$work/train1.log" 2>&1
    else
        OMP_NUM_THREADS=1 train mpirun --oversubscribe -np 2 >"$work/train2.log" 2>&1
    fi
    echo "result side=ours kind=train ranks=$ranks threads=$threads model=$MODEL size=$SIZE" \
        "batch=$BATCH images_per_s=$(ours_rate "$work/train$ranks.log")" | tee -a "$log"
    mkdir -p "$work/torch$ranks"
    "$PY" bench/mpi_bench_ref.py train "$ranks" "$MODEL" "$SIZE" "$BATCH" "$ITERS" \
        "$work/torch$ranks" | tee -a "$log"
done
echo "load after: $(cut -d' ' -f1-3 /proc/loadavg)"

echo
echo "summary:"
awk '
function field(name,   i, kv) {
    for (i = 2; i <= NF; i++) { split($i, kv, "="); if (kv[1] == name) return kv[2] }
    return ""
}
/^result/ && field("path") != "" {
    t[field("side")] = field("best_s") + 0; mib = field("mib")
}
/^result/ && field("kind") == "train" {
    r[field("side"), field("ranks")] = field("images_per_s") + 0
}
END {
    printf "all-reduce of %s MiB, 2 ranks: ours %.3f s, torch gloo %.3f s, ratio %.2fx\n",
        mib, t["ours"], t["torch"], (t["ours"] > 0 ? t["torch"] / t["ours"] : 0)
    for (s = 1; s <= 2; s++) {
        side = s == 1 ? "ours" : "torch"
        printf "%-5s training: 1 rank x 2 threads %.3f img/s, 2 ranks x 1 thread %.3f img/s, " \
            "scaling %.2fx\n", side, r[side, 1], r[side, 2],
            (r[side, 1] > 0 ? r[side, 2] / r[side, 1] : 0)
    }
}' "$log"
