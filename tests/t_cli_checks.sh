#!/bin/sh
# Command-line checks of cnntrain, embdump and pth2h5 on a small phantom (tiny model, 32 px):
#  - a checkpoint records train_micro_batch; --resume with another --micro-batch is exit 2
#    naming both values and leaves the checkpoint folder as it was; with the same one it
#    resumes; a checkpoint without the attribute (made before it existed) resumes, warned;
#  - --micro-batch above --batch is exit 2 (no folder made), --batch 10 --micro-batch 3
#    (a last micro-batch of one image) too; without --micro-batch a batch below 16 is one
#    micro-batch;
#  - embdump --fold beyond FOLDS.h5's folds is exit 2 as in cnntrain ("has folds 0 to 2"),
#    before the trained-on-these-slices warning, writing nothing;
#  - a damaged newest checkpoint is warned about once on --resume;
#  - pth2h5 --list with --to-pth, --list with -o, --to-pth with --arch: exit 2, nothing
#    written; with torch, a tiny state_dict lacking fc.weight imports with --allow-missing
#    and a 6-output head (from fc.bias).
# Needs no shared data. About 10 s.
set -eu
: "${BIN:?}" "${PY:=/usr/bin/python3}"
WORK=${WORK:-$(mktemp -d)}
fail() {
    echo "FAIL: $*"
    exit 1
}
"$PY" -c 'import h5py' 2>/dev/null || {
    echo "skip: python3 lacks h5py (the checkpoints' attributes are read with it)"
    exit 77
}
cd "$WORK"

# attr FILE NAME: a root attribute of an HDF5 file, or "absent".
attr() {
    "$PY" -c 'import h5py, sys
f = h5py.File(sys.argv[1], "r")
print(f.attrs[sys.argv[2]] if sys.argv[2] in f.attrs else "absent")' "$1" "$2"
}
# snapshot DIR: names, sizes and checksums of its files.
snapshot() {
    (cd "$1" && for f in $(ls -A); do echo "$f $(cksum <"$f")"; done)
}

"$BIN/mkphantom" -q --series 12 --slices 6 --size 64 --test-fraction 0.25 -o P ||
    fail "mkphantom: exit $?"
"$BIN/dcm2jpg" -q -o PJ P || fail "dcm2jpg: exit $?"
"$BIN/mkfolds" -q -k 3 -o PF.h5 P/labels.csv PJ/meta.h5 || fail "mkfolds: exit $?"
train() {
    "$BIN/cnntrain" --arch tiny --size 32 --batch 8 -j 1 "$@" PJ PF.h5
}
train -q --micro-batch 4 --epochs 2 -o C || fail "cnntrain: exit $?"
recorded=$(attr C/epoch2.h5 train_micro_batch)
[ "$recorded" = 4 ] || fail "epoch2.h5 has train_micro_batch $recorded, expected 4"
echo "ok    a checkpoint records train_micro_batch ($recorded)"

# ---- --resume with another micro-batch ----
cp -r C Cmb
before=$(snapshot Cmb)
rc=0
train --micro-batch 2 --epochs 3 --resume -o Cmb 2>err || rc=$?
[ $rc -eq 2 ] || fail "--resume with --micro-batch 2 over 4: exit $rc, expected 2"
grep -q "micro-batches of 2 (--micro-batch), the checkpoint's run had 4 (1 rank)" err ||
    fail "the refusal does not name both micro-batches: $(cat err)"
[ "$(snapshot Cmb)" = "$before" ] || fail "the refused resume changed Cmb: $(ls Cmb)"
echo "ok    --resume with another micro-batch: exit 2, folder unchanged:"
grep error err | sed 's/^/      /'
train -q --micro-batch 4 --epochs 3 --resume -o Cmb || fail "--resume, same micro-batch: exit $?"
[ -f Cmb/epoch3.h5 ] || fail "--resume with the same micro-batch made no epoch3.h5"
echo "ok    --resume with the same micro-batch goes on"

# A checkpoint made before train_micro_batch existed: taken as this run's, with a warning.
cp -r C Cold
"$PY" -c 'import h5py, sys
with h5py.File(sys.argv[1], "r+") as f:
    del f.attrs["train_micro_batch"]' Cold/epoch2.h5
train --micro-batch 2 --epochs 3 --resume -o Cold 2>err || fail "--resume, old checkpoint: exit $?"
grep -q "made without train_micro_batch" err || fail "no warning for an old checkpoint: $(cat err)"
recorded=$(attr Cold/epoch3.h5 train_micro_batch)
[ "$recorded" = 2 ] || fail "resumed old run's epoch3.h5 has train_micro_batch $recorded"
echo "ok    a checkpoint without train_micro_batch resumes, warned; the next records 2"

# ---- micro-batch against batch ----
rc=0
train --micro-batch 16 --epochs 1 -o X16 2>err || rc=$?
[ $rc -eq 2 ] || fail "--micro-batch 16 --batch 8: exit $rc, expected 2"
[ ! -e X16 ] || fail "--micro-batch 16 --batch 8 made X16"
grep -q "larger than --batch" err || fail "--micro-batch 16 --batch 8: $(cat err)"
rc=0
"$BIN/cnntrain" --arch tiny --size 32 --batch 10 --micro-batch 3 -o X3 PJ PF.h5 2>err || rc=$?
[ $rc -eq 2 ] || fail "--batch 10 --micro-batch 3 (last micro-batch of one): exit $rc"
"$BIN/cnntrain" -q --arch tiny --size 32 --batch 6 --epochs 1 -j 1 -o X6 PJ PF.h5 ||
    fail "--batch 6 without --micro-batch: exit $?"
recorded=$(attr X6/epoch1.h5 train_micro_batch)
[ "$recorded" = 6 ] || fail "--batch 6 alone: train_micro_batch $recorded, expected 6"
echo "ok    --micro-batch above --batch, a micro-batch of one: exit 2; default follows --batch"

# ---- embdump: a fold the folds file lacks ----
rc=0
"$BIN/embdump" --split val --fold 9 -o x.h5 C/epoch2.h5 PJ PF.h5 2>err || rc=$?
[ $rc -eq 2 ] || fail "embdump --fold 9 of 3 folds: exit $rc, expected 2: $(cat err)"
grep -q "fold 9: PF.h5 has folds 0 to 2" err || fail "embdump --fold 9: $(cat err)"
! grep -q "trained on these slices" err || fail "embdump --fold 9 warned first: $(cat err)"
[ ! -e x.h5 ] || fail "embdump --fold 9 wrote x.h5"
echo "ok    embdump --fold 9 of 3 folds: exit 2, nothing written"

# ---- a damaged newest checkpoint ----
cp -r C Cd
head -c 1000 C/epoch2.h5 >Cd/epoch2.h5
train --micro-batch 4 --epochs 2 --resume -o Cd 2>err || fail "resume past a damaged file: $?"
warned=$(grep -c "Cd/epoch2.h5: cannot open" err || true)
[ "$warned" -eq 1 ] || fail "the damaged checkpoint was warned about $warned times"
echo "ok    a damaged newest checkpoint: warned once, resumed from epoch1.h5"

# ---- pth2h5's conflicting options ----
"$BIN/pth2h5" -q --to-pth -o tiny.pth C/epoch2.h5 || fail "pth2h5 --to-pth: exit $?"
for args in "--list --to-pth -o x.h5 tiny.pth" "--list -o x.h5 tiny.pth" \
    "--to-pth --arch tiny -o x.pth C/epoch2.h5"; do
    rc=0
    # shellcheck disable=SC2086 # the options are words
    "$BIN/pth2h5" $args 2>err || rc=$?
    [ $rc -eq 2 ] || fail "pth2h5 $args: exit $rc, expected 2: $(cat err)"
    [ ! -e x.h5 ] && [ ! -e x.pth ] || fail "pth2h5 $args wrote an output"
done
echo "ok    pth2h5 with conflicting options: exit 2, nothing written"

if "$PY" -c 'import torch' 2>/dev/null; then
    "$PY" -c 'import sys, torch
state = torch.load(sys.argv[1])
del state["fc.weight"]
torch.save(state, sys.argv[2])' tiny.pth nofcw.pth
    "$BIN/pth2h5" -q --arch tiny --allow-missing -o nofcw.h5 nofcw.pth ||
        fail "pth2h5 --allow-missing of a head without fc.weight: exit $?"
    outputs=$("$PY" -c 'import h5py, sys
print(h5py.File(sys.argv[1], "r")["architecture"].attrs["num_outputs"])' nofcw.h5)
    [ "$outputs" = 6 ] || fail "a head without fc.weight: num_outputs $outputs, expected 6"
    echo "ok    pth2h5 --arch tiny without fc.weight: a 6-output head from fc.bias"
else
    echo "note: python3 lacks torch: the head without fc.weight is not checked"
fi
