#!/bin/sh
# embdump sharded under mpirun (a one-epoch tiny classifier, 64 px phantom PPM images, batch
# 4, one engine thread in every run) and the sweep of killed runs' temporaries:
#  - 2 and 3 ranks (--per-variant, float32 and --fp16) write the single process's file
#    exactly: every dataset bit for bit (dtype, shape, bytes), every attribute but
#    command_line and created equal; 3 ranks with 54 slices in 14 batches leave rank 2 one
#    batch fewer than ranks 0 and 1 (a round where it sends nothing);
#  - mpirun -np 1 writes the plain process's file exactly;
#  - the output folder holds a temporary of a dead process (as kill -9 leaves) and one of a
#    live process (a concurrent job): the next run removes the first, keeps the second, and
#    keeps names that only look alike (no PID after ".tmp-", not hidden); this part runs
#    without MPI too;
#  - a missing image under mpirun: every rank stops with exit 3 naming it, nothing written.
# Needs no shared data; skipped after the sweep checks when mpirun or the build's MPI is
# missing. About 5-15 s.
set -eu
: "${BIN:?}" "${BUILD:?}" "${WORK:?}" "${PY:=/usr/bin/python3}"
. "$(dirname "$0")/mpi_env.sh"
for p in mkphantom dcm2jpg mkfolds cnntrain embdump; do
    [ -x "$BIN/$p" ] || fail "$BIN/$p is missing"
done
# One engine thread everywhere: the engine's sums depend on the thread count.
mpi="timeout 120 mpirun --oversubscribe"

"$BIN/mkphantom" -q -o "$WORK/ph" --series 10 --slices 5-7 --size 64 --seed 7 \
    --prevalence 0.9 --test-fraction 0.25 -j 2 || fail "mkphantom: exit $?"
"$BIN/dcm2jpg" -q -j 2 --format ppm -o "$WORK/img" "$WORK/ph" || fail "dcm2jpg: exit $?"
"$BIN/mkfolds" -q -k 2 -o "$WORK/folds.h5" "$WORK/ph/labels.csv" "$WORK/img/meta.h5" ||
    fail "mkfolds: exit $?"
"$BIN/cnntrain" -q --arch tiny --size 64 --batch 16 --micro-batch 8 --lr 1e-3 --seed 3 -j 1 \
    --fold 0 --epochs 1 -o "$WORK/ck" "$WORK/img" "$WORK/folds.h5" || fail "cnntrain: exit $?"

# embed [LAUNCHER...] -- OUT [OPTIONS]
embed() {
    launcher=""
    while [ "$1" != -- ]; do launcher="$launcher $1"; shift; done
    out=$2
    shift 2
    $launcher "$BIN/embdump" -q --batch 4 --per-variant -j 1 "$@" -o "$WORK/out/$out" \
        "$WORK/ck/epoch1.h5" "$WORK/img" "$WORK/folds.h5" || fail "embdump $out: exit $?"
}

# Temporaries in the output folder: one of a process that has ended, one of a live one.
mkdir -p "$WORK/out"
dead=$(sh -c 'echo $$')
sleep 60 &
live=$!
touch "$WORK/out/.plain.h5.tmp-$dead-0" "$WORK/out/.plain.h5.tmp-$live-0" \
    "$WORK/out/.plain.h5.tmp-x$dead-0" "$WORK/out/plain.h5.tmp-$dead-0"
start=$(date +%s)
embed -- plain.h5
kill "$live"
[ ! -e "$WORK/out/.plain.h5.tmp-$dead-0" ] || fail "the dead process's temporary is left"
[ -e "$WORK/out/.plain.h5.tmp-$live-0" ] || fail "the live process's temporary was removed"
rm "$WORK/out/.plain.h5.tmp-$live-0"
echo "ok    sweep: the temporary of ended pid $dead removed, that of live pid $live kept"
[ -e "$WORK/out/.plain.h5.tmp-x$dead-0" ] && [ -e "$WORK/out/plain.h5.tmp-$dead-0" ] ||
    fail "a name that is not a temporary of ours was removed"
rm "$WORK/out/.plain.h5.tmp-x$dead-0" "$WORK/out/plain.h5.tmp-$dead-0"
mpi_require_or_skip
embed -- plain16.h5 --fp16
embed $mpi -np 1 -- np1.h5
embed $mpi -np 2 -- np2.h5
embed $mpi -np 2 -- np2-16.h5 --fp16
embed $mpi -np 3 -- np3.h5
echo "6 embdump runs: $(($(date +%s) - start)) s (load: $(uptime | sed 's/.*average: //'))"
left=$(ls -A "$WORK/out" | grep -v -E '^(plain|plain16|np1|np2|np2-16|np3)\.h5$' || true)
[ -z "$left" ] || fail "left in the output folder: $left"

# A missing image: every rank refuses before the model runs; exit 3, nothing written.
bad=$WORK/badimg
cp -r "$WORK/img" "$bad"
victim=$(ls "$bad"/*.ppm | sed -n 20p)
rm "$victim"
rc=0
$mpi -np 2 "$BIN/embdump" -q --batch 4 -o "$WORK/bad/out.h5" "$WORK/ck/epoch1.h5" "$bad" \
    "$WORK/folds.h5" 2>"$WORK/bad.err" || rc=$?
[ "$rc" -eq 3 ] || { cat "$WORK/bad.err"; fail "missing image under mpirun: exit $rc, not 3"; }
grep -q "$(basename "$victim" .ppm)" "$WORK/bad.err" ||
    fail "missing image: the message does not name it: $(head -n 2 "$WORK/bad.err")"
[ ! -e "$WORK/bad" ] || fail "missing image: $WORK/bad was created"
echo "ok    a missing image under mpirun: exit 3, '$(grep -m 1 . "$WORK/bad.err" | cut -c 1-100)'"

"$PY" - "$WORK/out" "$(cd "$(dirname "$0")" && pwd)/py" <<'EOF'
import sys
import h5py
import numpy as np

sys.path.insert(0, sys.argv[2])
import testlib

out = sys.argv[1]


load = testlib.h5_contents


for ref_name, got_name in (("plain", "np1"), ("plain", "np2"), ("plain16", "np2-16"),
                           ("plain", "np3")):
    ref, ref_attrs = load("%s/%s.h5" % (out, ref_name))
    got, got_attrs = load("%s/%s.h5" % (out, got_name))
    differing = [k for k in ref if k not in got or ref[k].dtype != got[k].dtype
                 or ref[k].shape != got[k].shape or ref[k].tobytes() != got[k].tobytes()]
    attrs_differing = [k for k in ref_attrs if k not in got_attrs
                       or not np.array_equal(ref_attrs[k], got_attrs[k])]
    ok = (not differing and not attrs_differing and set(ref) == set(got)
          and set(ref_attrs) == set(got_attrs) and len(ref) == 9)
    rows = ref["embedding"].shape
    testlib.check(ok, "%s.h5 equals %s.h5: %d datasets bit for bit (embedding %s %s), %d "
                  "attributes (differing: %s %s)"
                  % (got_name, ref_name, len(ref), "x".join(map(str, rows)),
                     ref["embedding"].dtype, len(ref_attrs), differing[:3],
                     attrs_differing[:3]))
testlib.finish("embdump under mpirun")
EOF
