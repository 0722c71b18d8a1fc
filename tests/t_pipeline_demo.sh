#!/bin/sh
# The make side of the DAG on the demo's phantom data, on its data-preparation stages (the
# `prepare` target; the whole demo runs in t_demo_long.sh): a second run has nothing to do, a
# deleted output is remade without redoing its inputs, a changed setting redoes its stage and
# what follows, and `dag` lists every node with its dependencies. Needs no shared data.
set -eu
: "${BIN:?}" "${WORK:?}"
fail() {
    echo "FAIL: $*"
    exit 1
}
out=$WORK/demo
mk="make --no-print-directory -f pipeline/pipeline.mk CONFIG=pipeline/configs/demo.mk"
args="OUT=$out BIN=$BIN"

eval "$mk $args prepare" >"$WORK/demo.log" 2>&1 || {
    cat "$WORK/demo.log"
    fail "the prepare stages failed"
}
for f in phantom/labels.csv phantom/test_labels.csv jpeg/meta.h5 folds.h5 sequences.h5; do
    [ -s "$out/$f" ] || fail "$out/$f missing"
done
echo "ok    prepare ran: $(grep -c . "$WORK/demo.log") lines of output, all outputs present"

# Up to date: make -q answers 0 only when nothing would run.
eval "$mk $args -q prepare" || fail "a second run would redo work"
echo "ok    second run has nothing to do"

meta_before=$(stat -c %Y "$out/jpeg/meta.h5")
rm "$out/folds.h5"
sleep 1
eval "$mk $args prepare" >"$WORK/rerun.log" 2>&1 || fail "rerun failed"
[ -s "$out/folds.h5" ] || fail "folds.h5 not remade"
[ "$(stat -c %Y "$out/jpeg/meta.h5")" = "$meta_before" ] || fail "meta.h5 was redone"
grep -q dcm2jpg "$WORK/rerun.log" && fail "dcm2jpg ran again"
echo "ok    a deleted folds.h5 is remade alone"

# A changed setting redoes its stage and what depends on it, nothing else.
seq_before=$(stat -c %Y "$out/sequences.h5")
sleep 1
eval "$mk $args FOLDS=3 prepare" >"$WORK/folds3.log" 2>&1 || fail "FOLDS=3 run failed"
grep -q "mkfolds -k 3" "$WORK/folds3.log" || fail "FOLDS=3 did not redo mkfolds"
grep -q dcm2jpg "$WORK/folds3.log" && fail "FOLDS=3 redid dcm2jpg"
[ "$(stat -c %Y "$out/sequences.h5")" = "$seq_before" ] || fail "FOLDS=3 redid seqbuild"
eval "$mk $args FOLDS=3 -q prepare" || fail "FOLDS=3 is not up to date after its run"
eval "$mk $args FOLDS=3 JPEG_SIZE=64 prepare" >"$WORK/size64.log" 2>&1 || fail "JPEG_SIZE run failed"
for step in "dcm2jpg.*--size 64" mkfolds seqbuild; do
    grep -q "$step" "$WORK/size64.log" || fail "JPEG_SIZE=64 did not redo $step"
done
echo "ok    FOLDS=3 redoes mkfolds alone; JPEG_SIZE=64 redoes dcm2jpg and what follows"

# The DAG as text: every node once, each dependency a node listed before it, and the node
# counts the config implies (1 fold x E epochs: 3 E embdump, E lstmtrain).
eval "$mk $args dag" >"$WORK/dag.txt" || fail "make dag failed"
epochs=$(sed -n 's/^CNN_EPOCHS = //p' pipeline/configs/demo.mk)
awk -F '\t' -v e="$epochs" '
    { if ($1 in seen) { print "node twice: " $1; bad = 1 } seen[$1] = 1
      n = split($4, deps, " ")
      for (i = 1; i <= n; i++) if (!(deps[i] in seen)) { print "dep not before: " $1 " " deps[i]; bad = 1 }
      count[$2]++ }
    END { if (count["embdump"] != 3 * e || count["lstmtrain"] != e || count["cnntrain"] != 1) {
              print "counts", count["cnntrain"], count["embdump"], count["lstmtrain"]; bad = 1 }
          exit bad }' "$WORK/dag.txt" || fail "make dag: $(cat "$WORK/dag.txt" | head -n 3)"
echo "ok    make dag: $(wc -l <"$WORK/dag.txt") nodes, dependencies listed before use"

# No temporary leftovers anywhere.
left=$(find "$out" -name '.*tmp-*' -o -name '.phantom.partial' | head -n 3)
[ -z "$left" ] || fail "temporary files left: $left"
echo "pipeline demo: all checks passed"
