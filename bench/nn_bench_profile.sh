#!/bin/sh
# Where one training step (or forward) of the engine goes, from oneDNN's own per-primitive
# timings (DNNL_VERBOSE=1): time and share per kind of primitive (convolutions by kind and
# direction, reorders by source and destination layout, batch norm, ...), for the last of
# ITERS iterations, plus the step's phases as bench/nn_bench.c times them. Host loops (Adam,
# the engine's own 1x1 gradient reorder, average pool) are not oneDNN primitives: they are
# the difference between the phases and the primitives' sum.
#
#   sh bench/nn_bench_profile.sh   (MODEL=resnext101_32x8d SIZE=224 BATCH=2 MODE=train
#                                   ITERS=2 VARIANT=fp32+native BUILD=build)
# VARIANT=torch profiles PyTorch's step instead (bench/nn_bench_ref.py, whose mkldnn
# convolutions and reorders are the same oneDNN's primitives; its batch norm, relu, adds and
# Adam are ATen loops that oneDNN does not see: torch.autograd.profiler times those).
#
# The per-primitive times include waiting for a descheduled thread: on a loaded machine the
# shares of memory-bound primitives grow. Record the load (printed) with any figure.
set -eu
root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"
BUILD=${BUILD:-build}
MODEL=${MODEL:-resnext101_32x8d}
SIZE=${SIZE:-224}
BATCH=${BATCH:-2}
MODE=${MODE:-train}
ITERS=${ITERS:-2}
VARIANT=${VARIANT:-fp32+native}
export OMP_NUM_THREADS=2

if [ ! -f "$BUILD/libichpipe.a" ] || [ ! -f "$BUILD/config.mk" ]; then
    echo "nn profile: $BUILD/libichpipe.a is missing: run make first" >&2
    exit 1
fi
work=$(mktemp -d "${TMPDIR:-/tmp}/nn-profile.XXXXXX")
trap 'rm -rf "$work"' EXIT

config() { sed -n "s/^$1 = //p" "$BUILD/config.mk"; }
${CC:-cc} -std=c11 -O2 -g -Wall -Wextra -D_GNU_SOURCE -pthread -Icommon \
    $(config HDF5_CFLAGS) -c bench/nn_bench.c -o "$work/nn_bench.o"
${CXX:-c++} -pthread "$work/nn_bench.o" "$BUILD/libichpipe.a" -o "$work/nn_bench" \
    $(config DCMTK_LIBS) $(config HDF5_LIBS) $(config JPEG_LIBS) $(config ZLIB_LIBS) \
    $(config DNNL_LIBS) -lm

echo "nn profile: $MODEL $SIZE px batch $BATCH $MODE $VARIANT, load before:" \
    "$(cut -d' ' -f1-3 /proc/loadavg)"
if [ "$VARIANT" = torch ]; then
    DNNL_VERBOSE=1 PYTHONNOUSERSITE=1 "${PY:-/usr/bin/python3}" bench/nn_bench_ref.py \
        "$MODEL" "$SIZE" "$BATCH" "$MODE" "$ITERS" >"$work/verbose.txt"
else
    DNNL_VERBOSE=1 "$work/nn_bench" model "$MODEL" "$SIZE" "$BATCH" "$MODE" "$ITERS" \
        "$VARIANT" >"$work/verbose.txt"
fi
grep '^result' "$work/verbose.txt"
echo "load after: $(cut -d' ' -f1-3 /proc/loadavg)"

# The last iteration starts at the last execution of the stem's convolution (3 input
# channels) in forward; its weight reorder, just before, belongs to it too.
awk -F, '
$2 == "exec" {
    n++; line[n] = $0
    if ($4 == "convolution" && $6 ~ /^forward/ && $0 ~ /_ic3oc/) start = n
}
END {
    if (start > 1 && line[start - 1] ~ /,reorder,/) start--
    for (i = start; i <= n; i++) {
        nf = split(line[i], f, ",")
        t = f[nf]
        if (f[4] == "reorder") {
            split(f[7], md, " ")
            from = md[1]; to = md[2]
            sub(/.*blocked:/, "", from); sub(/:f0$/, "", from)
            sub(/.*blocked:/, "", to); sub(/:f0$/, "", to)
            key = "reorder " from " -> " to
        } else if (f[4] == "convolution") {
            kind = f[10] ~ /kh1/ ? "1x1" : (f[10] ~ /^g[0-9]/ || f[10] ~ /_g[0-9]/ ? \
                                               "grouped" : "stem")
            key = "conv " kind " " f[6]
        } else {
            key = f[4] " " f[6]
        }
        total[key] += t; count[key]++; all += t
    }
    for (k in total)
        printf "%9.1f ms %6.1f%% %5d  %s\n", total[k], 100 * total[k] / all, count[k], k
    printf "%9.1f ms %6.1f%% %5d  all oneDNN primitives of the last iteration\n", all, 100,
        n - start + 1
}' "$work/verbose.txt" | sort -rn
