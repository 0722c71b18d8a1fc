#!/bin/sh
# Training runs under make keep what they finished. A classifier killed (SIGKILL) after two
# epochs keeps their checkpoints and the rerun completes the pipeline from them; raising
# CNN_EPOCHS, LSTM_EPOCHS or LSTM_BAG extends the finished runs (--resume) and leaves their
# files alone; a setting that changes what the finished epochs hold (lr, seed, folds) still
# clears the run. A tiny phantom and one thread; needs no shared data.
set -eu
: "${BIN:?}" "${WORK:?}" "${PY:=/usr/bin/python3}"
fail() {
    echo "FAIL: $*"
    exit 1
}
out=$WORK/run
cnn=$out/cnn/f0
lstm=$out/lstm/f0

# pipeline LOG [VAR=value ...] [TARGET]: the pipeline on a phantom small enough for seconds.
pipeline() {
    log=$WORK/$1.log
    shift
    make --no-print-directory -f "${PIPELINE_MK:-pipeline/pipeline.mk}" \
        CONFIG=pipeline/configs/demo.mk OUT="$out" BIN="$BIN" THREADS=1 \
        PHANTOM_ARGS="--series 12 --slices 6-8 --size 48 --seed 3 --test-fraction 0.25" \
        FOLDS=3 CNN_SIZE=32 CNN_SAVE_EVERY=2 CNN_EPOCHS=5 LSTM_HIDDEN=16 LSTM_EPOCHS=2 \
        LSTM_BAG=2 EMB_TTA=orig "$@" >"$log" 2>&1
}
# stamp FILE...: inode and modification time of each file (equal: the file was left alone).
stamp() {
    stat -c '%i %y' "$@"
}
# bagged DIR: the epochs lstmtrain averaged into DIR/val.h5.
bagged() {
    "$PY" -c 'import sys, h5py; print(h5py.File(sys.argv[1], "r").attrs["lstm_epochs"])' \
        "$1/val.h5"
}

# 1. cnntrain killed under make once epoch2.h5 exists: the launcher runs it in the background
# and kills it with SIGKILL, as an OOM killer or bkill would (cnntrain niced, so that on a busy
# machine the watch sees epoch2.h5 before the run ends).
cat >"$WORK/kill_at_epoch2.sh" <<EOF
nice -n 10 "\$@" &
pid=\$!
while kill -0 \$pid 2>/dev/null; do
    if [ -e "$cnn/epoch2.h5" ]; then
        kill -9 \$pid
        break
    fi
    sleep 0.02
done
wait \$pid
EOF
if pipeline killed LAUNCH_cnntrain="sh $WORK/kill_at_epoch2.sh"; then
    fail "the run was not stopped: cnntrain finished before it could be killed"
fi
grep -q "Error 137" "$WORK/killed.log" ||
    fail "cnntrain was not killed: $(tail -n 3 "$WORK/killed.log")"
[ ! -e "$cnn/epoch5.h5" ] || fail "cnntrain had finished every epoch before the kill"
for e in 1 2; do
    [ -s "$cnn/epoch$e.h5" ] || fail "epoch$e.h5 was deleted after the kill: $(ls "$cnn" | xargs)"
done
kept=$(stamp "$cnn/epoch1.h5" "$cnn/epoch2.h5")
echo "ok    cnntrain killed after epoch 2: epoch1.h5 and epoch2.h5 kept ($(ls "$cnn" | xargs))"

pipeline rerun || fail "the rerun after the kill failed: $(tail -n 5 "$WORK/rerun.log")"
grep -q "cnntrain: resuming from" "$WORK/rerun.log" || fail "the rerun did not resume cnntrain"
[ "$(stamp "$cnn/epoch1.h5" "$cnn/epoch2.h5")" = "$kept" ] || fail "epochs 1-2 were redone"
for e in 1 2 3 4 5; do
    [ -s "$cnn/epoch$e.h5" ] && [ -s "$lstm/e$e/test.h5" ] || fail "epoch $e: outputs missing"
done
[ -s "$out/submission.csv" ] || fail "no submission after the rerun"
pipeline uptodate -q || fail "the finished run is not up to date"
echo "ok    the rerun resumed cnntrain, kept epochs 1-2 and finished (5 epochs, submission)"

# 2. Longer runs extend the finished ones.
cnn_before=$(stamp "$cnn"/epoch[1-5].h5 "$out"/emb/f0/e1/*.h5)
lstm_before=$(stamp "$lstm"/e[1-5]/epoch[12].h5)
pipeline longer CNN_EPOCHS=6 LSTM_EPOCHS=3 LSTM_BAG=3 || fail "the longer run failed"
grep -q "training afresh" "$WORK/longer.log" && fail "a longer run cleared: \
$(grep "training afresh" "$WORK/longer.log" | head -n 2)"
grep -q "cnntrain: resuming from $cnn/epoch5.h5" "$WORK/longer.log" ||
    fail "CNN_EPOCHS=6 did not resume from epoch5.h5"
[ "$(grep -c "lstmtrain: resuming from" "$WORK/longer.log")" = 5 ] ||
    fail "LSTM_EPOCHS=3 did not resume the 5 finished sequence-model runs"
[ "$(stamp "$cnn"/epoch[1-5].h5 "$out"/emb/f0/e1/*.h5)" = "$cnn_before" ] ||
    fail "CNN_EPOCHS=6 touched the finished checkpoints or embeddings"
[ "$(stamp "$lstm"/e[1-5]/epoch[12].h5)" = "$lstm_before" ] ||
    fail "LSTM_EPOCHS=3 touched the finished sequence-model checkpoints"
[ -s "$cnn/epoch6.h5" ] && [ -s "$lstm/e6/test.h5" ] || fail "epoch 6 was not made"
got=$(bagged "$lstm/e1")
[ "$got" = "1,2,3" ] || fail "LSTM_BAG=3 bagged epochs $got, not 1,2,3"
grep -q "bagavg .*submission.csv" "$WORK/longer.log" || fail "the submission was not redone"
echo "ok    CNN_EPOCHS 5->6, LSTM_EPOCHS 2->3, LSTM_BAG 2->3: resumed, earlier files untouched"

pipeline bag1 CNN_EPOCHS=6 LSTM_EPOCHS=3 LSTM_BAG=1 || fail "the LSTM_BAG=1 run failed"
[ "$(grep -c "bagging only" "$WORK/bag1.log")" = 6 ] || fail "LSTM_BAG=1 did not rebag alone"
got=$(bagged "$lstm/e1")
[ "$got" = "3" ] || fail "LSTM_BAG=1 bagged epochs $got, not 3"
pipeline bag1q -q CNN_EPOCHS=6 LSTM_EPOCHS=3 LSTM_BAG=1 || fail "LSTM_BAG=1 not up to date"
echo "ok    LSTM_BAG 3->1: the 6 runs rebagged (epoch 3) without training"

# 3. Settings that change the finished epochs clear the run (one stage's target each; one
# classifier epoch is enough to see it).
e1=$(stamp "$lstm/e1/epoch1.h5")
pipeline seed CNN_EPOCHS=6 LSTM_EPOCHS=3 LSTM_BAG=1 LSTM_SEED=2 "$lstm/e1/val.h5" ||
    fail "the LSTM_SEED run failed"
grep -q "^$lstm/e1: .*/lstmtrain is newer: training afresh" "$WORK/seed.log" ||
    fail "LSTM_SEED did not clear"
[ "$(stamp "$lstm/e1/epoch1.h5")" != "$e1" ] || fail "LSTM_SEED left epoch1.h5 as it was"
e1=$(stamp "$cnn/epoch1.h5")
pipeline lr CNN_EPOCHS=1 CNN_LR=2e-3 "$cnn/epoch1.h5" || fail "the CNN_LR run failed"
grep -q "^$cnn: .*/cnntrain is newer: training afresh" "$WORK/lr.log" ||
    fail "CNN_LR did not clear"
[ "$(stamp "$cnn/epoch1.h5")" != "$e1" ] || fail "CNN_LR left epoch1.h5 as it was"
e1=$(stamp "$cnn/epoch1.h5")
pipeline folds CNN_EPOCHS=1 CNN_LR=2e-3 FOLDS=4 "$cnn/epoch1.h5" || fail "the FOLDS=4 run failed"
grep -q "^$cnn: .*/folds.h5 is newer: training afresh" "$WORK/folds.log" ||
    fail "FOLDS=4 did not clear"
[ "$(stamp "$cnn/epoch1.h5")" != "$e1" ] || fail "FOLDS=4 left epoch1.h5 as it was"
echo "ok    CNN_LR, LSTM_SEED and FOLDS clear their runs"
echo "pipeline resume: all checks passed"
