#!/bin/sh
# The phantom pipeline without a test split (--test-fraction 0: mkphantom writes no
# test_labels.csv) finishes, with a header-only submission and no score, and is then up to
# date; with --test-fraction=F (F > 0) the submission is scored on test_labels.csv, which the
# bagging settings name. A tiny phantom and one thread; needs no shared data.
set -eu
: "${BIN:?}" "${WORK:?}"
fail() {
    echo "FAIL: $*"
    exit 1
}
out=$WORK/run

# pipeline LOG PHANTOM_ARGS [make options]: the whole pipeline, one epoch per model.
pipeline() {
    log=$WORK/$1.log
    phantom=$2
    shift 2
    make --no-print-directory -f "${PIPELINE_MK:-pipeline/pipeline.mk}" \
        CONFIG=pipeline/configs/demo.mk OUT="$out" BIN="$BIN" THREADS=1 \
        PHANTOM_ARGS="--series 12 --slices 6-8 --size 48 --seed 5 $phantom" FOLDS=3 \
        CNN_SIZE=32 CNN_EPOCHS=1 LSTM_HIDDEN=16 LSTM_EPOCHS=1 LSTM_BAG=1 "$@" >"$log" 2>&1
}

pipeline none "--test-fraction 0.25 --test-fraction 0" ||
    fail "the run without test slices failed: $(tail -n 3 "$WORK/none.log")"
[ ! -e "$out/phantom/test_labels.csv" ] || fail "mkphantom wrote test_labels.csv"
[ "$(cat "$out/submission.csv")" = "ID,Label" ] ||
    fail "submission.csv is not a header alone: $(head -n 2 "$out/submission.csv")"
[ ! -e "$out/submission.scores" ] || fail "a submission without test labels was scored"
[ -s "$out/validation/f0.scores" ] || fail "no validation score"
pipeline none-again "--test-fraction 0.25 --test-fraction 0" -q ||
    fail "the finished run is not up to date: $(tail -n 3 "$WORK/none-again.log")"
echo "ok    --test-fraction 0: finished, header-only submission, no score, then up to date"

pipeline some "--test-fraction=0.25" || fail "the run with test slices failed"
grep -q "test_labels.csv" "$out/.settings/bagavg" ||
    fail "the bagging settings name no test labels: $(cat "$out/.settings/bagavg")"
[ -s "$out/submission.scores" ] || fail "the submission was not scored on test_labels.csv"
rows=$(($(wc -l <"$out/submission.csv") - 1))
[ "$rows" -gt 0 ] || fail "no test rows in submission.csv"
echo "ok    --test-fraction=0.25: scored submission ($rows rows), bagging settings: \
$(cat "$out/.settings/bagavg")"
echo "pipeline without a test split: all checks passed"
