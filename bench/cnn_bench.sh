#!/bin/sh
# cnntrain and embdump against the same loops in PyTorch (bench/cnn_bench_ref.py), side by
# side in one run, on phantom JPEGs (mkphantom, dcm2jpg): images/s and the share of the time
# spent waiting for the image loader. Both sides: 2 compute threads, LOADERS loader threads
# (C) or DataLoader worker processes (PyTorch), the same model, size, batch, micro-batch,
# crop and augmentations.
#   train: one epoch over every labelled slice (--fold -1: no validation), batch BATCH in
#          micro-batches of MICRO; images/s over every step but the first (warm-up).
#   embed: every slice, TTA orig + hflip + transpose, batch BATCH; every batch counted.
# Then the loader against a fast consumer: embdump with the tiny model, orig only.
# REPS rounds alternating the two sides; the best round of each side counts.
#
#   sh bench/cnn_bench.sh   (MODEL=resnext50_32x4d SIZE=128 BATCH=16 MICRO=8 SLICES=96
#                            LOADERS=2 REPS=2 BIN=bin PY=/usr/bin/python3)
set -eu
root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"
BIN=${BIN:-bin}
PY=${PY:-/usr/bin/python3}
MODEL=${MODEL:-resnext50_32x4d}
SIZE=${SIZE:-128}
BATCH=${BATCH:-16}
MICRO=${MICRO:-8}
SLICES=${SLICES:-96}
LOADERS=${LOADERS:-2}
REPS=${REPS:-2}
export OMP_NUM_THREADS=2 PYTHONNOUSERSITE=1 PYTHONDONTWRITEBYTECODE=1

for p in mkphantom dcm2jpg mkfolds cnntrain embdump; do
    if [ ! -x "$BIN/$p" ]; then
        echo "cnn bench: $BIN/$p is missing: run make first" >&2
        exit 1
    fi
done
if ! "$PY" -c 'import torch, torchvision, cv2, scipy' 2>/dev/null; then
    echo "cnn bench: $PY lacks torch, torchvision, cv2 or scipy: nothing to compare with"
    exit 0
fi
work=$(mktemp -d "${TMPDIR:-/tmp}/cnn-bench.XXXXXX")
trap 'rm -rf "$work"' EXIT

# 256-px phantom slices, a series of 12 per patient: SLICES / 12 series.
"$BIN/mkphantom" -q -o "$work/ph" --series $((SLICES / 12)) --slices 12 --size 256 --seed 3 \
    --prevalence 0.5 -j 2
"$BIN/dcm2jpg" -q -j 2 -o "$work/jpg" "$work/ph"
"$BIN/mkfolds" -q -k 2 -o "$work/folds.h5" "$work/ph/labels.csv" "$work/jpg/meta.h5"
count=$(ls "$work/jpg" | grep -c '\.jpg$')
echo "cnn bench: $MODEL at $SIZE px, batch $BATCH (micro $MICRO), $count slices of 256 px," \
    "$LOADERS loaders, $REPS rounds; load before: $(cut -d' ' -f1-3 /proc/loadavg)"

# C training: the step lines' rate and data wait, every step after the first.
c_train() {
    rm -rf "$work/ck"
    "$BIN/cnntrain" --arch "$MODEL" --size "$SIZE" --batch "$BATCH" --micro-batch "$MICRO" \
        --lr 2e-5 --epochs 1 --fold -1 --log-every 1 -j "$LOADERS" -o "$work/ck" \
        "$work/jpg" "$work/folds.h5" 2>&1 |
        awk '/ step [0-9]+\// {
                 n++; if (n == 1) next
                 for (i = 1; i <= NF; i++) {
                     if ($i == "img/s") rate = $(i - 1)
                     if ($i == "wait") wait = $(i + 1)
                 }
                 secs += '"$BATCH"' / rate; waited += wait; imgs += '"$BATCH"'
             }
             END { printf "result side=c mode=train images_per_s=%.3f data_wait_pct=%.1f\n",
                   imgs / secs, 100 * waited / secs }'
}

# C embedding: embdump's summary line ("... X images/s, data wait W s (P%)").
c_embed() {
    "$BIN/embdump" --size "$SIZE" --crop intended --batch "$BATCH" -j "$LOADERS" \
        -o "$work/emb.h5" "$work/ck/epoch1.h5" "$work/jpg" "$work/folds.h5" 2>&1 |
        awk '/ images\/s, data wait / {
                 for (i = 1; i <= NF; i++) if ($i == "images/s,") rate = $(i - 1)
                 pct = $NF; gsub(/[()%]/, "", pct)
                 printf "result side=c mode=embed images_per_s=%s data_wait_pct=%s\n", rate, pct
             }'
}

py_side() {
    "$PY" bench/cnn_bench_ref.py "$1" "$MODEL" "$SIZE" "$BATCH" "$MICRO" "$work/jpg" \
        "$work/folds.h5" "$LOADERS" | grep '^result'
}

log=$work/results.txt
: >"$log"
round=1
while [ $round -le "$REPS" ]; do
    for mode in train embed; do
        py_side $mode | tee -a "$log"
        c_$mode | tee -a "$log"
    done
    round=$((round + 1))
done

echo
echo "| loop | PyTorch images/s | ours images/s | ratio | data wait PyTorch | ours |"
echo "|---|---|---|---|---|---|"
for mode in train embed; do
    awk -v mode="$mode" '
        { side = ""; rate = 0; wait = 0
          for (i = 1; i <= NF; i++) {
              split($i, kv, "=")
              if (kv[1] == "side") side = kv[2]
              if (kv[1] == "mode" && kv[2] != mode) next
              if (kv[1] == "images_per_s") rate = kv[2] + 0
              if (kv[1] == "data_wait_pct") wait = kv[2]
          }
          if (rate > best[side]) { best[side] = rate; bwait[side] = wait } }
        END { printf "| %s | %.2f | %.2f | %.2fx | %s%% | %s%% |\n", mode, best["torch"],
              best["c"], best["c"] / best["torch"], bwait["torch"], bwait["c"] }' "$log"
done
# The loader against a fast consumer: embdump (orig only) with the tiny model, one compute
# thread (no spinning). A low data wait there means the loader keeps up with that rate, far
# above what the ResNeXt loops consume.
"$BIN/cnntrain" -q --arch tiny --size "$SIZE" --batch "$BATCH" --epochs 1 --fold -1 \
    -j "$LOADERS" -o "$work/tiny" "$work/jpg" "$work/folds.h5"
OMP_NUM_THREADS=1 "$BIN/embdump" --size "$SIZE" --tta orig --batch "$BATCH" -j "$LOADERS" \
    -o "$work/tiny.h5" "$work/tiny/epoch1.h5" "$work/jpg" "$work/folds.h5" 2>&1 |
    awk '/ images\/s, data wait / {
             for (i = 1; i <= NF; i++) if ($i == "images/s,") rate = $(i - 1)
             pct = $NF; gsub(/[()]/, "", pct)
             printf "loader check: the tiny model at %s images/s waited %s of the time\n",
                    rate, pct
         }'
echo "load after: $(cut -d' ' -f1-3 /proc/loadavg)"
