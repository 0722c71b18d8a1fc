#!/bin/sh
# The NN engine (common/nn/) against Debian's PyTorch, side by side in one run: ResNeXt-101
# 32x8d, batch 2, at each size: forward images/s (eval mode), training images/s (forward,
# loss, backward, Adam) and each process's peak resident memory; then every distinct
# convolution shape of the model through the engine against the same oneDNN primitive run
# standalone. Both sides use 2 threads.
#
# Each measurement is its own process (so that peak memory is that mode's alone), REPS
# rounds alternating PyTorch and the engine; the best round of each side counts, and the
# table gives the ratio engine / PyTorch (above 1: the engine is faster or, for memory, uses
# more). The machine is shared: compare ratios, not absolute rates, between runs.
#
#   sh bench/nn_bench.sh   (SIZES="224 480" MODES="eval train" REPS=2 ITERS=2
#                           PRECISIONS="fp32 fp32+native fp32+cache bf16" CONVS=1
#                           MODEL=resnext101_32x8d BATCH=2 BUILD=build PY=/usr/bin/python3)
# fp32+cache: inference keeps the reordered fp32 weights (faster, +1 copy of the weights);
# bf16 caches its half-size copy by default. Training is the same with or without.
# +native: weights (in training also their gradients and Adam moments) kept in the
# backend's order (resnext_set_native_weights), so that no step reorders them but the
# backward data.
#
# The C driver (bench/nn_bench.c) is compiled here against $BUILD/libichpipe.a with the
# flags of $BUILD/config.mk; run `make` first.
set -eu
root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"
BUILD=${BUILD:-build}
PY=${PY:-/usr/bin/python3}
MODEL=${MODEL:-resnext101_32x8d}
BATCH=${BATCH:-2}
SIZES=${SIZES:-224 480}
REPS=${REPS:-2}
ITERS=${ITERS:-2}
PRECISIONS=${PRECISIONS:-fp32 fp32+native fp32+cache bf16}
MODES=${MODES:-eval train}
CONVS=${CONVS:-1}
export OMP_NUM_THREADS=2 PYTHONNOUSERSITE=1 PYTHONDONTWRITEBYTECODE=1

if [ ! -f "$BUILD/libichpipe.a" ] || [ ! -f "$BUILD/config.mk" ]; then
    echo "nn bench: $BUILD/libichpipe.a is missing: run make first" >&2
    exit 1
fi
if ! "$PY" -c 'import torch, torchvision' 2>/dev/null; then
    echo "nn bench: $PY has no torch and torchvision, nothing to compare with"
    exit 0
fi
work=$(mktemp -d "${TMPDIR:-/tmp}/nn-bench.XXXXXX")
trap 'rm -rf "$work"' EXIT

config() { sed -n "s/^$1 = //p" "$BUILD/config.mk"; }
cc=${CC:-cc}
cxx=${CXX:-c++}
$cc -std=c11 -O2 -g -Wall -Wextra -D_GNU_SOURCE -pthread -Icommon $(config HDF5_CFLAGS) \
    -c bench/nn_bench.c -o "$work/nn_bench.o"
$cxx -pthread "$work/nn_bench.o" "$BUILD/libichpipe.a" -o "$work/nn_bench" \
    $(config DCMTK_LIBS) $(config HDF5_LIBS) $(config JPEG_LIBS) $(config ZLIB_LIBS) \
    $(config DNNL_LIBS) -lm

log=$work/results.txt
echo "nn bench: $MODEL batch $BATCH, sizes $SIZES, $REPS rounds of $ITERS iterations," \
    "load before: $(cut -d' ' -f1-3 /proc/loadavg)"
for size in $SIZES; do
    for mode in $MODES; do
        round=1
        while [ "$round" -le "$REPS" ]; do
            "$PY" bench/nn_bench_ref.py "$MODEL" "$size" "$BATCH" "$mode" "$ITERS" | tee -a "$log"
            for prec in $PRECISIONS; do
                case "$mode.$prec" in train.*+cache) continue ;; esac
                "$work/nn_bench" model "$MODEL" "$size" "$BATCH" "$mode" "$ITERS" "$prec" |
                    tee -a "$log"
            done
            round=$((round + 1))
        done
    done
done

# MODES=" " (nothing but the convolutions) leaves no results to sum up.
[ -s "$log" ] && echo && echo "summary (best round of each side; ratio = engine / PyTorch):" &&
awk '
function field(name,   i, kv) {
    for (i = 2; i <= NF; i++) { split($i, kv, "="); if (kv[1] == name) return kv[2] }
    return ""
}
/^result/ {
    key = field("size") " " field("mode")
    side = field("side") == "torch" ? "torch" : "ours-" field("precision")
    rate = field("images_per_s") + 0; rss = field("peak_rss_mib") + 0
    if (rate > best[key, side]) best[key, side] = rate
    if (!((key, side) in mem) || rss < mem[key, side]) mem[key, side] = rss
    if (!(key in seen)) { seen[key] = 1; keys[++nk] = key }
    if (!(side in seen_side) && side != "torch") { seen_side[side] = 1; sides[++ns] = side }
}
END {
    printf "%-6s %-6s %-16s %10s %10s %7s %10s %10s %7s\n", "size", "mode", "engine",
        "img/s", "torch", "ratio", "rss MiB", "torch", "ratio"
    for (k = 1; k <= nk; k++) {
        split(keys[k], p, " ")
        t = best[keys[k], "torch"]; tm = mem[keys[k], "torch"]
        for (s = 1; s <= ns; s++) {
            if (!((keys[k], sides[s]) in mem)) continue
            o = best[keys[k], sides[s]]; om = mem[keys[k], sides[s]]
            printf "%-6s %-6s %-16s %10.3f %10.3f %6.2fx %10d %10d %6.2fx\n", p[1], p[2],
                sides[s], o, t, (t > 0 ? o / t : 0), om, tm, (tm > 0 ? om / tm : 0)
        }
    }
}' "$log"

if [ "$CONVS" = 1 ]; then
    echo
    echo "convolutions: engine (its layouts, cached weights) against oneDNN standalone," \
        "GFLOP/s, best of $((ITERS + 1)) (ratio = standalone time / engine time)"
    for size in $SIZES; do
        for prec in $PRECISIONS; do
            case "$prec" in *+cache) continue ;; esac
            "$work/nn_bench" convs "$MODEL" "$size" "$BATCH" $((ITERS + 1)) "$prec"
        done
    done | tee "$work/convs.txt"
    echo
    echo "convolution summary (time-weighted: total standalone time / total engine time):"
    awk '
    function field(name,   i, kv) {
        for (i = 2; i <= NF; i++) { split($i, kv, "="); if (kv[1] == name) return kv[2] }
        return ""
    }
    /^conv/ {
        split(field("shape"), sh, "_")
        kind = (sh[2] == "k1" ? "1x1" : (sh[2] == "k3" ? "3x3 grouped" : "stem 7x7"))
        dtype = field("compute") (field("weights") == "native" ? "+native" : "")
        key = field("size") " " dtype " " field("dir") " " kind
        e = field("engine_gflops") + 0; a = field("standalone_gflops") + 0; r = field("ratio") + 0
        # Time is proportional to 1 / rate for a shape; weight by the shape once per call.
        et[key] += 1 / e; at[key] += 1 / a
        if (!(key in low) || r < low[key]) low[key] = r
        if (!(key in seen)) { seen[key] = 1; keys[++nk] = key }
    }
    END {
        printf "%-5s %-12s %-12s %-12s %8s %12s\n", "size", "dtype", "direction", "kind",
            "ratio", "worst shape"
        for (k = 1; k <= nk; k++) {
            split(keys[k], p, " ")
            kind = p[4] (p[5] != "" ? " " p[5] : "")
            printf "%-5s %-12s %-12s %-12s %7.2fx %11.2fx\n", p[1], p[2], p[3], kind,
                at[keys[k]] / et[keys[k]], low[keys[k]]
        }
    }' "$work/convs.txt"
fi
