#!/bin/sh
# lstmtrain data-parallel under mpirun (synthetic series of tests/py/test_lstmtrain.py, 40
# series, embeddings 16 wide, hidden 8, batch 4, prediction batches of 3, one thread; 15% of
# the labelled entries made unknown (-1), 'any' included, so the loss means of a batch count
# other entries on each rank than in the whole batch):
#  - mpirun -np 1 writes the plain run's files exactly (3 epochs: checkpoint, per-epoch and
#    bagged predictions; every dataset, every attribute but command_line and created);
#  - 2 ranks (2 series each per step) after 3 epochs (18 steps): every weight and Adam
#    moment within 1e-5 of its tensor's largest magnitude of the plain run's (the gradient
#    parts are summed in another order; measured 1.6e-6), the predictions within 1e-5
#    (measured 1.2e-7), the ranks' weights identical (lstmtrain compares a hash after each
#    epoch). Scaling each rank's part by its share of the batch's slices instead (right only
#    when every label is known) missed by 8e-2 in the weights and 3e-3 in the predictions;
#  - sharded prediction exactly: with --lr 0 (the weights stay the initial ones) 2 and 3
#    ranks write the plain run's predictions bit for bit;
#  - the plain run's epoch 1 resumed with 2 ranks ends within the same limits of the plain
#    3-epoch run, and says it changes the rank count;
#  - a rank killed (SIGKILL) once epoch 3 is logged ends the job non-zero within 30 s
#    (measured about 1 s); only complete files remain besides temporaries of the killed ranks, and
#    --resume with one process removes those and finishes.
# Needs no shared data; skipped when mpirun or the build's MPI is missing. About 10-20 s.
set -eu
: "${BIN:?}" "${BUILD:?}" "${WORK:?}" "${PY:=/usr/bin/python3}"
. "$(dirname "$0")/mpi_env.sh"
[ -x "$BIN/lstmtrain" ] || fail "$BIN/lstmtrain is missing"
mpi_require_or_skip
mpi="timeout 120 mpirun --oversubscribe"
here=$(cd "$(dirname "$0")" && pwd)

# data DIR SERIES WIDTH: synthetic inputs with 15% of the known label entries unknown.
data() {
    "$PY" - "$here/py" "$1" "$2" "$3" <<'EOF' || fail "making the synthetic data: exit $?"
import sys
sys.path.insert(0, sys.argv[1])
import h5py
import numpy as np
import test_lstmtrain

paths = test_lstmtrain.make_dataset(sys.argv[2], n_series=int(sys.argv[3]),
                                    width=int(sys.argv[4]))
with h5py.File(paths["folds"], "r+") as f:
    label = f["label"][()]
    hidden = (np.random.default_rng(5).random(label.shape) < 0.15) & (label >= 0)
    label[hidden] = -1
    f["label"][...] = label
EOF
}
data "$WORK/data" 40 16
inputs="$WORK/data/sequences.h5 $WORK/data/folds.h5 $WORK/data/emb.h5"

# train [LAUNCHER...] -- OUT [OPTIONS]
train() {
    launcher=""
    while [ "$1" != -- ]; do launcher="$launcher $1"; shift; done
    out=$2
    shift 2
    # shellcheck disable=SC2086
    $launcher "$BIN/lstmtrain" --hidden 8 --epochs 3 --bag 2 --lr 3e-3 --seed 4 -j 1 \
        --batch 4 --predict-batch 3 "$@" -o "$WORK/$out" $inputs 2>"$WORK/$out.log" ||
        { cat "$WORK/$out.log"; fail "lstmtrain $out: exit $?"; }
}
start=$(date +%s)
train -- plain
train $mpi -np 1 -- np1
train $mpi -np 2 -- np2
grep -q "parameters identical on all 2 ranks" "$WORK/np2.log" ||
    fail "no equal-parameters line from the 2-rank run"
grep "parameters identical" "$WORK/np2.log" | sed 's/^/    /'
train -- lr0 --lr 0 --epochs 1 --bag 1
train $mpi -np 2 -- lr0-np2 --lr 0 --epochs 1 --bag 1
train $mpi -np 3 -- lr0-np3 --lr 0 --epochs 1 --bag 1
mkdir -p "$WORK/resumed"
train -- first --epochs 1
cp "$WORK/first/epoch1.h5" "$WORK/first/val_epoch1.h5" "$WORK/first/test_epoch1.h5" \
    "$WORK/resumed/"
train $mpi -np 2 -- resumed --resume
grep -q "resuming with 2 ranks a run made with 1" "$WORK/resumed.log" ||
    { cat "$WORK/resumed.log"; fail "the resumed run does not say it changes the rank count"; }
echo "9 lstmtrain runs: $(($(date +%s) - start)) s (load: $(uptime | sed 's/.*average: //'))"

# Is the process there and not a zombie (a finished child not yet waited for)?
running() {
    state=$(ps -o stat= -p "$1" 2>/dev/null || true)
    [ -n "$state" ] && [ "${state#Z}" = "$state" ]
}

# A rank killed mid-training: a longer run (400 series, 32 wide), rank 1 killed once epoch 3
# is logged.
data "$WORK/big" 400 32
out=$WORK/killed
# shellcheck disable=SC2086
$mpi -np 2 "$BIN/lstmtrain" --hidden 32 --epochs 1000 --bag 1 --seed 4 -j 1 -o "$out" \
    "$WORK/big/sequences.h5" "$WORK/big/folds.h5" "$WORK/big/emb.h5" >"$out.log" 2>&1 &
launcher=$!
wait_for_log "$out.log" "epoch 3/" "$launcher" killed
victim=""
for pid in $(pgrep -P "$(pgrep -P "$launcher" | head -n 1)") $(pgrep -P "$launcher"); do
    if tr '\0' '\n' <"/proc/$pid/environ" 2>/dev/null | grep -qx OMPI_COMM_WORLD_RANK=1
    then victim=$pid; fi
done
[ -n "$victim" ] || { kill "$launcher"; fail "killed: rank 1's process not found"; }
start=$(date +%s)
kill -KILL "$victim"
while running "$launcher" && [ $(($(date +%s) - start)) -lt 60 ]; do
    sleep 0.2
done
secs=$(($(date +%s) - start))
kill "$launcher" 2>/dev/null || true
rc=0
wait "$launcher" || rc=$?
[ "$rc" -ne 0 ] || fail "killed: the job exited 0"
[ "$secs" -le 30 ] || fail "killed: the job took $secs s to end"
temporaries=$(ls -A "$out" | grep -c '\.tmp-' || true)
epochs=$(ls "$out" | sed -n 's/^epoch\([0-9]*\)\.h5$/\1/p' | sort -n | tail -n 1)
"$PY" -c 'import h5py, sys
for p in sys.argv[1:]:
    h5py.File(p, "r").close()' "$out"/*.h5 || fail "killed: an incomplete output"
echo "ok    rank 1 (pid $victim) got SIGKILL after epoch 3's line; the job exited $rc" \
    "after $secs s; $(ls "$out" | wc -l) complete files (epochs 1-$epochs)," \
    "$temporaries temporaries"
"$BIN/lstmtrain" -q --hidden 32 --epochs $((epochs + 1)) --bag 1 --seed 4 -j 1 -o "$out" \
    --resume "$WORK/big/sequences.h5" "$WORK/big/folds.h5" "$WORK/big/emb.h5" ||
    fail "killed: --resume with one process: exit $?"
left=$(ls -A "$out" | grep '\.tmp-' || true)
[ -z "$left" ] && [ -e "$out/val.h5" ] || fail "killed: after --resume: left $left"
echo "ok    --resume with one process finished epoch $((epochs + 1)); no temporary left"

"$PY" - "$WORK" "$here/py" <<'EOF'
import sys
import h5py
import numpy as np

sys.path.insert(0, sys.argv[2])
import testlib
from testlib import check

work = sys.argv[1]


load = testlib.h5_contents


def same(ref_dir, got_dir, names):
    differing = []
    for name in names:
        ref, ref_attrs = load("%s/%s/%s" % (work, ref_dir, name))
        got, got_attrs = load("%s/%s/%s" % (work, got_dir, name))
        differing += [name + ":" + k for k in ref if k not in got
                      or ref[k].tobytes() != got[k].tobytes()]
        differing += [name + ":@" + k for k in set(ref_attrs) | set(got_attrs)
                      if not np.array_equal(ref_attrs.get(k), got_attrs.get(k))]
    return differing


files = ["epoch3.h5", "val.h5", "test.h5", "val_epoch1.h5", "test_epoch2.h5", "val_epoch3.h5"]
differing = same("plain", "np1", files)
check(not differing, "mpirun -np 1 equals the plain run bit for bit: %d files (differing: %s)"
      % (len(files), differing[:3]))
for ranks in (2, 3):
    names = ["val_epoch1.h5", "test_epoch1.h5"]
    differing = same("lr0", "lr0-np%d" % ranks, names)
    check(not differing, "--lr 0: %d ranks' predictions equal the plain run's bit for bit "
          "(differing: %s)" % (ranks, differing[:3]))


def close(what, got_dir):
    ref, ref_attrs = load(work + "/plain/epoch3.h5")
    got, got_attrs = load(work + "/%s/epoch3.h5" % got_dir)
    trained = [k for k in ref if k.startswith(("state_dict/", "adam/"))
               and ref[k].dtype.kind == "f"]
    worst, worst_name = 0.0, "-"
    for k in trained:
        diff = float(np.abs(ref[k].astype(np.float64) - got[k]).max()
                     / max(float(np.abs(ref[k]).max()), 1e-30))
        if diff > worst:
            worst, worst_name = diff, k
    pred = 0.0
    for name in ("val.h5", "test.h5", "val_epoch2.h5"):
        a, _ = load("%s/plain/%s" % (work, name))
        b, _ = load("%s/%s/%s" % (work, got_dir, name))
        same_ids = a["id"].tobytes() == b["id"].tobytes()
        pred = max(pred, float(np.abs(a["prob"] - b["prob"]).max()) if same_ids else 1.0)
    check(len(trained) >= 44 and worst <= 1e-5 and pred <= 1e-5
          and got_attrs["step"] == ref_attrs["step"] > 0,
          "%s: %d weights and Adam moments after %d steps, largest difference %.3g of the "
          "tensor's largest magnitude (%s; limit 1e-5); predictions within %.3g (limit 1e-5)"
          % (what, len(trained), got_attrs["step"], worst, worst_name, pred))


close("2 ranks x 2 series against 1 process x 4", "np2")
close("the plain run's epoch 1 resumed with 2 ranks", "resumed")
testlib.finish("lstmtrain under mpirun")
EOF
