#!/bin/sh
# make demo: phantom head-CT series through the whole pipeline (pipeline/configs/demo.mk), then
# a summary: where the submission is, its score on the phantom test labels against the
# prevalence baseline, and the validation score. OUT (default demo-out) holds everything;
# rerunning redoes only what is missing. Exit 1 when the score does not beat the baseline.
set -eu
cd "$(dirname "$0")/.."
OUT=${OUT:-demo-out}
BIN=${BIN:-bin}
THREADS=${THREADS:-2}
JOBS=${JOBS:-1}

start=$(date +%s)
make --no-print-directory -j "$JOBS" -f pipeline/pipeline.mk CONFIG=pipeline/configs/demo.mk \
    OUT="$OUT" BIN="$BIN" THREADS="$THREADS"

# One value of an HDF5 attribute (h5dump from hdf5-tools); one key of a key=value file.
attr() {
    h5dump -a "$2" "$1" 2>/dev/null | sed -n 's/^ *(0): //p' | head -n 1
}
value() {
    printf '%.4f' "$(sed -n "s/^$2=//p" "$1" | head -n 1)"
}
meta=$OUT/jpeg/meta.h5
folds=$OUT/folds.h5
seqs=$OUT/sequences.h5
scores=$OUT/submission.scores
score=$(value "$scores" score)
baseline=$(value "$scores" baseline)
echo
echo "demo summary ($(($(date +%s) - start)) s)"
echo "  DICOM slices    $OUT/phantom: $(find "$OUT/phantom" -name '*.dcm' | wc -l) files"
echo "  dcm2jpg         $(attr "$meta" converted) converted, $(attr "$meta" existing) kept," \
    "$(attr "$meta" skipped) skipped, $(attr "$meta" failed) failed -> $OUT/jpeg/"
echo "  mkfolds         $(attr "$folds" labelled_slices) labelled slices in" \
    "$(attr "$folds" folds) folds, $(attr "$folds" test_slices) test slices -> $folds"
echo "  seqbuild        $(attr "$seqs" series_count) series," \
    "$(attr "$seqs" slice_count) slices -> $seqs"
echo "  cnntrain        $(ls "$OUT"/cnn/f*/epoch*.h5 | wc -l) checkpoints -> $OUT/cnn/"
echo "  embdump         $(ls "$OUT"/emb/f*/e*/*.h5 | wc -l) embedding files -> $OUT/emb/"
echo "  lstmtrain       $(ls -d "$OUT"/lstm/f*/e* | wc -l) runs -> $OUT/lstm/"
for f in "$OUT"/validation/f*.scores; do
    echo "  validation      fold $(basename "$f" .scores | tr -d f): score" \
        "$(value "$f" score), prevalence baseline $(value "$f" baseline)"
done
echo "  submission      $OUT/submission.csv ($(($(wc -l <"$OUT/submission.csv") - 1)) rows," \
    "$(($(wc -l <"$OUT/submission.csv") / 6)) test slices)"
echo "  test score      $score (weighted log loss on the phantom test labels)"
echo "  baseline        $baseline (predicting each label's training prevalence)"
if awk -v s="$score" -v b="$baseline" 'BEGIN { exit !(s < b) }'; then
    echo "  result          the submission beats the prevalence baseline" \
        "($(awk -v s="$score" -v b="$baseline" 'BEGIN { printf "%.3f", s / b }') x)"
else
    echo "  result          FAILED: the submission does not beat the prevalence baseline"
    exit 1
fi
