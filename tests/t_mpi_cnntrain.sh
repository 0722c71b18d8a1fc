#!/bin/sh
# cnntrain data-parallel under mpirun (tiny model, 64 px, phantom data, 1 thread per rank):
#  - N = 1 under mpirun equals the plain process exactly: every dataset and the step, epoch,
#    val_loss attributes of both epoch checkpoints;
#  - N = 2 with per-rank micro-batch 8 equals the plain process stepping on the same 16
#    images as 2 micro-batches of 8: parameters and Adam moments after 2 epochs (20 steps)
#    within 1e-5 of each tensor's largest magnitude (measured: bit for bit), and the ranks'
#    parameters identical (cnntrain checks a hash of them on every rank after each epoch);
#    the last batch of each epoch (6 images) falls to rank 0 alone;
#  - validation sharded over 2 ranks equals one process's: the 2-rank run's step-9
#    checkpoint resumed by one process (step 10 is rank 0's micro-batch alone, so the batch
#    norm statistics match too) gives the 2-rank run's epoch 1 bit for bit, val_loss included;
#  - resuming the plain run's epoch 1 with 2 ranks gives its epoch 2 within the same limit;
#  - a missing JPEG stops every rank with exit 3 naming the file, leaving nothing; a truncated
#    one too, found by the rank whose share of the image check holds it;
#  - a rank killed (SIGKILL) mid-training ends the job non-zero within 30 s (measured about
#    1 s); a rank stopped (SIGSTOP) ends it within 30 s with ICH_DIST_TIMEOUT=4 (measured
#    about 5 s), rank 0 naming rank 1 and the call it did not reach (or, when rank 1 stopped
#    already inside that call, the call rank 0 waited in); only complete checkpoints remain.
# Needs no shared data; skipped when mpirun or the build's MPI is missing. About 12-25 s.
set -eu
: "${BIN:?}" "${BUILD:?}" "${WORK:?}" "${PY:=/usr/bin/python3}"
. "$(dirname "$0")/mpi_env.sh"
for p in mkphantom dcm2jpg mkfolds cnntrain; do
    [ -x "$BIN/$p" ] || fail "$BIN/$p is missing"
done
mpi_require_or_skip
mpi="mpirun --oversubscribe"

ph=$WORK/phantom
"$BIN/mkphantom" -q -o "$ph" --series 20 --slices 10-10 --size 64 --seed 7 --prevalence 0.9 \
    -j 2 || fail "mkphantom: exit $?"
"$BIN/dcm2jpg" -q -j 2 -o "$WORK/jpg" "$ph" || fail "dcm2jpg: exit $?"
"$BIN/mkfolds" -q -o "$WORK/folds.h5" "$ph/labels.csv" "$WORK/jpg/meta.h5" ||
    fail "mkfolds: exit $?"

# train [LAUNCHER...] -- OPTIONS: the shared settings; output and extra options after "--".
train() {
    launcher=""
    while [ "$1" != -- ]; do launcher="$launcher $1"; shift; done
    shift
    $launcher "$BIN/cnntrain" --arch tiny --size 64 --batch 16 --micro-batch 8 --lr 1e-3 \
        --seed 2 -j 1 --fold 0 "$@" "$WORK/jpg" "$WORK/folds.h5"
}
start=$(date +%s)
train -- -q -o "$WORK/plain" --epochs 2 || fail "plain cnntrain: exit $?"
echo "plain run, 2 epochs: $(($(date +%s) - start)) s"
start=$(date +%s)
train $mpi -np 1 -- -q -o "$WORK/np1" --epochs 2 || fail "mpirun -np 1 cnntrain: exit $?"
echo "mpirun -np 1, 2 epochs: $(($(date +%s) - start)) s"
start=$(date +%s)
train $mpi -np 2 -- -o "$WORK/np2" --epochs 2 --save-every 9 2>"$WORK/np2.log" ||
    { cat "$WORK/np2.log"; fail "mpirun -np 2 cnntrain: exit $?"; }
echo "mpirun -np 2, 2 epochs: $(($(date +%s) - start)) s"
# The checks below count on a short last batch that rank 0 takes alone.
slices=$(sed -n 's/.* \([0-9]*\) training slices.*/\1/p' "$WORK/np2.log")
[ -n "$slices" ] && [ $((slices % 16)) -ge 1 ] && [ $((slices % 16)) -le 8 ] ||
    fail "expected a last batch of 1-8 images, got ${slices:-?} training slices"
grep -q "parameters identical on all 2 ranks" "$WORK/np2.log" ||
    { cat "$WORK/np2.log"; fail "no equal-parameters line from the 2-rank run"; }
grep "parameters identical" "$WORK/np2.log" | sed 's/^/    /'

mkdir -p "$WORK/valcheck" "$WORK/resumed"
cp "$WORK/np2/step9.h5" "$WORK/valcheck/"
train -- -o "$WORK/valcheck" --epochs 1 --resume 2>"$WORK/valcheck.log" ||
    { cat "$WORK/valcheck.log"; fail "one process resuming the 2-rank run: exit $?"; }

cp "$WORK/plain/epoch1.h5" "$WORK/resumed/"
train $mpi -np 2 -- -o "$WORK/resumed" --epochs 2 --resume 2>"$WORK/resumed.log" ||
    { cat "$WORK/resumed.log"; fail "resume with 2 ranks: exit $?"; }
grep -q "resuming with 2 ranks a run made with 1" "$WORK/resumed.log" ||
    { cat "$WORK/resumed.log"; fail "the resumed run does not say it changes the rank count"; }
grep -m 1 "resuming with" "$WORK/resumed.log" | sed 's/^/    /'

# A missing JPEG: every rank refuses before training; exit 3, the file named, nothing left.
bad=$WORK/badjpg
mkdir -p "$bad"
cp "$WORK"/jpg/*.jpg "$bad/"
rm "$(ls "$bad"/*.jpg | head -n 1)"
rc=0
$mpi -np 2 "$BIN/cnntrain" -q --arch tiny --size 64 --epochs 1 -o "$WORK/bad" "$bad" \
    "$WORK/folds.h5" 2>"$WORK/bad.err" || rc=$?
[ "$rc" -eq 3 ] || { cat "$WORK/bad.err"; fail "missing JPEG under mpirun: exit $rc, not 3"; }
grep -q "no image" "$WORK/bad.err" || fail "missing JPEG: message '$(head -n 3 "$WORK/bad.err")'"
[ ! -e "$WORK/bad" ] || fail "missing JPEG: $WORK/bad was created"
echo "ok    a missing JPEG under mpirun: exit 3, '$(grep -m 1 "no image" "$WORK/bad.err")'"

# A truncated JPEG: each rank reads only its share of the images before training; the one
# holding it names it, the other says another rank found one; exit 3, nothing left.
cp "$WORK"/jpg/*.jpg "$bad/"
cut=$(ls "$bad"/*.jpg | tail -n 1)
head -c 300 "$cut" >"$cut.part" && mv "$cut.part" "$cut"
rc=0
$mpi -np 2 "$BIN/cnntrain" -q --arch tiny --size 64 --epochs 1 -o "$WORK/bad" "$bad" \
    "$WORK/folds.h5" 2>"$WORK/cut.err" || rc=$?
[ "$rc" -eq 3 ] || { cat "$WORK/cut.err"; fail "truncated JPEG under mpirun: exit $rc, not 3"; }
grep -q "$(basename "$cut")" "$WORK/cut.err" ||
    { cat "$WORK/cut.err"; fail "truncated JPEG: the file is not named"; }
grep -q "another rank found an unreadable image" "$WORK/cut.err" ||
    { cat "$WORK/cut.err"; fail "truncated JPEG: both ranks read it (each should read a share)"; }
[ ! -e "$WORK/bad" ] || fail "truncated JPEG: $WORK/bad was created"
echo "ok    a truncated JPEG under mpirun: exit 3, named by one rank, the other reads its share"

# Is the process there and not a zombie (a finished child not yet waited for)?
running() {
    state=$(ps -o stat= -p "$1" 2>/dev/null || true)
    [ -n "$state" ] && [ "${state#Z}" = "$state" ]
}

# fault NAME SIGNAL: start a long 2-rank run, signal rank 1 once training runs, and expect
# the job to end non-zero within 30 s.
fault() {
    out=$WORK/fault-$1
    ICH_DIST_TIMEOUT=4 $mpi -np 2 "$BIN/cnntrain" --arch tiny --size 64 --batch 16 \
        --micro-batch 8 --fold 0 -j 1 --epochs 50 --save-every 5 --log-every 1 -o "$out" \
        "$WORK/jpg" "$WORK/folds.h5" >"$out.log" 2>&1 &
    launcher=$!
    wait_for_log "$out.log" "step 7/" "$launcher" "$1"
    victim=""
    for pid in $(ps -o pid= --ppid "$launcher"); do
        if tr '\0' '\n' <"/proc/$pid/environ" 2>/dev/null | grep -qx OMPI_COMM_WORLD_RANK=1
        then victim=$pid; fi
    done
    [ -n "$victim" ] || { kill "$launcher"; fail "$1: rank 1's process not found"; }
    start=$(date +%s)
    kill "-$2" "$victim"
    # Poll rather than wait: a job that hangs is ended here after 60 s.
    while running "$launcher" && [ $(($(date +%s) - start)) -lt 60 ]; do
        sleep 0.2
    done
    secs=$(($(date +%s) - start))
    kill "$launcher" 2>/dev/null || true
    kill -9 "$victim" 2>/dev/null || true
    rc=0
    wait "$launcher" || rc=$?
    [ "$rc" -ne 0 ] || fail "$1: the job exited 0"
    [ "$secs" -le 30 ] || fail "$1: the job took $secs s to end"
    leftovers=$(ls -A "$out" | grep -v -E '^(epoch|step)[0-9]+\.h5$' || true)
    [ -z "$leftovers" ] || fail "$1: left $leftovers in $out"
    "$PY" -c 'import h5py, sys
for p in sys.argv[1:]:
    h5py.File(p, "r").close()' "$out"/*.h5 || fail "$1: an incomplete checkpoint"
    echo "ok    $1 rank: rank 1 (pid $victim) got SIG$2 after step 7; the job exited $rc" \
        "after $secs s; $(ls "$out" | wc -l) complete checkpoints left"
}
fault killed KILL
fault stopped STOP
named="rank\\(s\\) 1 of 2 did not reach|rank 0 of 2 waited more than 4 s"
grep -q -E "$named" "$WORK/fault-stopped.log" || fail "stopped rank: no message naming it"
grep -m 1 -E "$named" "$WORK/fault-stopped.log" | sed 's/^/    /'

"$PY" - "$WORK" <<'EOF'
import sys
import h5py
import numpy as np

work = sys.argv[1]
failures = []
def check(ok, what):
    print(("ok    " if ok else "FAIL  ") + what)
    if not ok:
        failures.append(what)

def load(path):
    out = {}
    with h5py.File(path, "r") as f:
        f.visititems(lambda name, obj: out.__setitem__(name, obj[()])
                     if isinstance(obj, h5py.Dataset) else None)
        attrs = {k: f.attrs[k] for k in ("step", "epoch", "val_loss", "train_ranks")}
    return out, attrs

for epoch in (1, 2):
    ref, ref_attrs = load("%s/plain/epoch%d.h5" % (work, epoch))
    got, got_attrs = load("%s/np1/epoch%d.h5" % (work, epoch))
    differing = [k for k in ref if k not in got or not np.array_equal(ref[k], got[k])]
    same = all(np.array_equal(ref_attrs[k], got_attrs[k]) for k in ref_attrs)
    check(not differing and set(got) == set(ref) and same,
          "epoch %d: mpirun -np 1 equals the plain run bit for bit (%d datasets, %s; "
          "differing: %s)" % (epoch, len(ref), sorted(ref_attrs), differing[:3]))

def compare(what, ref_path, got_path):
    ref, ref_attrs = load(ref_path)
    got, got_attrs = load(got_path)
    trained = [k for k in ref if k.startswith("adam/") or
               (k.startswith("state_dict/") and not ("running_" in k or "num_batches" in k))]
    worst, worst_name, exact = 0.0, "", 0
    for k in trained:
        scale = max(float(np.abs(ref[k]).max()), 1e-30)
        diff = float(np.abs(ref[k].astype(np.float64) - got[k]).max()) / scale
        exact += diff == 0
        if diff > worst:
            worst, worst_name = diff, k
    check(len(trained) > 50 and worst <= 1e-5 and ref_attrs["step"] == got_attrs["step"],
          "%s: %d parameters and Adam moments after %d steps, largest difference %.3g of "
          "the tensor's largest magnitude (%s), %d of them bit for bit (limit 1e-5)"
          % (what, len(trained), ref_attrs["step"], worst, worst_name or "-", exact))
    return ref_attrs, got_attrs

ref_attrs, got_attrs = compare("2 ranks x micro-batch 8 against 1 process x 2 micro-batches",
                               work + "/plain/epoch2.h5", work + "/np2/epoch2.h5")
print("      val_loss %.5f with 2 ranks (rank 0's batch norm statistics), %.5f in one process"
      % (got_attrs["val_loss"], ref_attrs["val_loss"]))

ref, ref_attrs = load(work + "/np2/epoch1.h5")
got, got_attrs = load(work + "/valcheck/epoch1.h5")
differing = [k for k in ref if k not in got or not np.array_equal(ref[k], got[k])]
check(not differing and set(got) == set(ref) and ref_attrs["val_loss"] == got_attrs["val_loss"]
      and ref_attrs["step"] == got_attrs["step"] == 10
      and (ref_attrs["train_ranks"], got_attrs["train_ranks"]) == (2, 1),
      "sharded validation: %d datasets bit for bit and val_loss %.6f against %.6f from one "
      "process resuming step 9 (differing: %s)"
      % (len(ref), ref_attrs["val_loss"], got_attrs["val_loss"], differing[:3]))
compare("the plain run's epoch 1 resumed with 2 ranks", work + "/plain/epoch2.h5",
        work + "/resumed/epoch2.h5")
sys.exit(1 if failures else 0)
EOF
