#!/bin/sh
# The demo's DAG on phantom data: it runs end to end, a second run has nothing to do, and a
# deleted output is remade without redoing its inputs. Needs no shared data.
set -eu
: "${BIN:?}" "${WORK:?}"
fail() {
    echo "FAIL: $*"
    exit 1
}
out=$WORK/demo
mk="make --no-print-directory -f pipeline/pipeline.mk CONFIG=pipeline/configs/demo.mk"
args="OUT=$out BIN=$BIN"

OUT=$out BIN=$BIN sh pipeline/demo.sh >"$WORK/demo.log" 2>&1 || {
    cat "$WORK/demo.log"
    fail "demo.sh exited $?"
}
grep -q "demo summary" "$WORK/demo.log" || fail "no summary printed"
for f in phantom/labels.csv jpeg/meta.h5 folds.h5 sequences.h5; do
    [ -s "$out/$f" ] || fail "$out/$f missing"
done
echo "ok    demo ran: $(grep -c . "$WORK/demo.log") lines of output, all outputs present"

# Up to date: make -q answers 0 only when nothing would run.
eval "$mk $args -q" || fail "a second run would redo work"
echo "ok    second run has nothing to do"

meta_before=$(stat -c %Y "$out/jpeg/meta.h5")
rm "$out/folds.h5"
sleep 1
eval "$mk $args" >"$WORK/rerun.log" 2>&1 || fail "rerun failed"
[ -s "$out/folds.h5" ] || fail "folds.h5 not remade"
[ "$(stat -c %Y "$out/jpeg/meta.h5")" = "$meta_before" ] || fail "meta.h5 was redone"
grep -q dcm2jpg "$WORK/rerun.log" && fail "dcm2jpg ran again"
echo "ok    a deleted folds.h5 is remade alone"

# No temporary leftovers anywhere.
left=$(find "$out" -name '.*tmp-*' -o -name '.phantom.partial' | head -n 3)
[ -z "$left" ] || fail "temporary files left: $left"
echo "pipeline demo: all checks passed"
