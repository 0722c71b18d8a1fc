#!/bin/sh
# Where outputs go, the same for every program (fsutil/h5io output creation):
# - an output under missing folders is written, the folders made (mkfolds, seqbuild, bagavg -o,
#   --scores, --h5-out, dcm2jpg), with the same content as one written into an existing folder;
# - an output path that is a folder (or ends in '/') is refused with exit 2 before any input is
#   read (a missing input then still gives exit 2, not 3), naming the path, leaving nothing;
# - a parent that cannot be made or written into: exit 5 naming the final path and the
#   system's reason (the chmod 555 case is skipped where permissions do not stop writes, e.g.
#   as root; a parent that is a plain file is checked everywhere);
# - dcm2jpg with nothing to convert: exit 3 and an OUTDIR it made itself is removed again,
#   a folder that was there before is kept;
# - bagavg --baseline-holdout without --baseline: exit 2.
# On a 6-series mkphantom set (a few seconds).
set -eu
: "${BIN:?}" "${PY:=/usr/bin/python3}"
if [ -z "${WORK:-}" ]; then
    WORK=$(mktemp -d)
    trap 'rm -rf "$WORK"' EXIT
fi
LC_ALL=C
export LC_ALL
fail() {
    echo "FAIL: $*"
    exit 1
}
W=$WORK/outpaths
rm -rf "$W"
mkdir -p "$W"
"$PY" -c 'import h5py' 2>/dev/null || {
    echo "skip: $PY lacks h5py (needed to write a prediction file and compare HDF5 outputs)"
    exit 77
}

# Run a program, keeping its exit code in $rc and its stderr in $W/err.
run() {
    rc=0
    "$@" >"$W/out" 2>"$W/err" || rc=$?
}
# The datasets of two HDF5 files are equal (provenance attributes differ by design).
same_h5() {
    "$PY" - "$1" "$2" <<'EOF' || fail "$1 and $2 hold different datasets"
import sys, h5py, numpy as np
a, b = (h5py.File(p, "r") for p in sys.argv[1:3])
names = []
a.visititems(lambda n, o: names.append(n) if isinstance(o, h5py.Dataset) else None)
other = []
b.visititems(lambda n, o: other.append(n) if isinstance(o, h5py.Dataset) else None)
assert names and sorted(names) == sorted(other), (names, other)
for n in names:
    x, y = a[n][()], b[n][()]
    nan_too = np.asarray(x).dtype.kind == "f"  # a slice without a spacing is NaN in both
    assert np.array_equal(x, y, equal_nan=nan_too), n
EOF
}
# No temporary file ".NAME.tmp-PID-N" anywhere below $W.
no_temporaries() {
    left=$(find "$W" -name '.*.tmp-*' | head -n 3)
    [ -z "$left" ] || fail "$1: temporary files left: $left"
}

"$BIN/mkphantom" -q --series 6 --slices 3 --size 32 --test-fraction 0.25 --seed 5 -o "$W/P" ||
    fail "mkphantom: exit $?"
"$BIN/dcm2jpg" -q -o "$W/PJ" "$W/P" || fail "dcm2jpg: exit $?"
run "$BIN/dcm2jpg" -q -o "$W/new1/a/PJ" "$W/P"
[ "$rc" = 0 ] && [ -f "$W/new1/a/PJ/meta.h5" ] ||
    fail "dcm2jpg -o under missing folders: exit $rc: $(cat "$W/err")"
echo "dcm2jpg: OUTDIR under missing folders made (exit 0)"
META=$W/PJ/meta.h5
LABELS=$W/P/labels.csv
"$PY" - "$W/pred.h5" <<'EOF' || fail "cannot write the prediction fixture"
import sys, h5py, numpy as np
with h5py.File(sys.argv[1], "w") as f:
    f["id"] = np.array([b"ID_000a", b"ID_000b", b"ID_000c"], dtype="S7")
    f["prob"] = np.array([[0.1, 0.2, 0.3, 0.4, 0.5, 0.6]] * 3, dtype=np.float32)
    f.attrs["subtypes"] = "epidural,intraparenchymal,intraventricular,subarachnoid,subdural,any"
EOF
printf 'ID,Label\n' >"$W/lab.csv"
for s in epidural intraparenchymal intraventricular subarachnoid subdural any; do
    printf 'ID_000a_%s,1\nID_000b_%s,0\n' "$s" "$s" >>"$W/lab.csv"
done

# 1. Missing parent folders are made, and the outputs equal those written beside them.
"$BIN/mkfolds" -q -k 2 -o "$W/folds.h5" "$LABELS" "$META" || fail "mkfolds: exit $?"
run "$BIN/mkfolds" -q -k 2 -o "$W/new2/b/c/folds.h5" "$LABELS" "$META"
[ "$rc" = 0 ] || fail "mkfolds -o under missing folders: exit $rc: $(cat "$W/err")"
same_h5 "$W/folds.h5" "$W/new2/b/c/folds.h5"
"$BIN/seqbuild" -q -o "$W/seq.h5" "$META" || fail "seqbuild: exit $?"
run "$BIN/seqbuild" -q -o "$W/new3/seq.h5" "$META"
[ "$rc" = 0 ] || fail "seqbuild -o under missing folders: exit $rc: $(cat "$W/err")"
same_h5 "$W/seq.h5" "$W/new3/seq.h5"
"$BIN/bagavg" -q -o "$W/sub.csv" -l "$W/lab.csv" --scores "$W/scores.txt" \
    --h5-out "$W/mean.h5" "$W/pred.h5" >/dev/null || fail "bagavg: exit $?"
run "$BIN/bagavg" -q -o "$W/new4/sub.csv" -l "$W/lab.csv" --scores "$W/new5/x/scores.txt" \
    --h5-out "$W/new6/mean.h5" "$W/pred.h5"
[ "$rc" = 0 ] || fail "bagavg outputs under missing folders: exit $rc: $(cat "$W/err")"
cmp -s "$W/sub.csv" "$W/new4/sub.csv" || fail "bagavg -o under a new folder: other bytes"
cmp -s "$W/scores.txt" "$W/new5/x/scores.txt" || fail "bagavg --scores: other bytes"
same_h5 "$W/mean.h5" "$W/new6/mean.h5"
no_temporaries "missing folders"
echo "missing parent folders made: mkfolds, seqbuild, bagavg -o/--scores/--h5-out (same content)"

# 2. An output that is a folder: exit 2 before any input is read (a missing input is exit 3
# otherwise), the folder untouched.
mkdir "$W/adir"
missing=$W/no-such-input
refused() { # name, option, path, then the command
    name=$1 opt=$2 path=$3
    shift 3
    run "$@"
    [ "$rc" = 2 ] || fail "$name $opt $path (a folder): exit $rc, want 2: $(cat "$W/err")"
    grep -qF -e "$opt $path is a folder" -e "$opt $path ends in '/'" "$W/err" ||
        fail "$name: the message does not name $opt $path: $(cat "$W/err")"
    [ -z "$(ls -A "$W/adir")" ] || fail "$name: something written into $W/adir"
    [ ! -e "$W/newdir" ] || fail "$name: $W/newdir/ made"
    no_temporaries "$name $opt $path"
}
for path in "$W/adir" "$W/newdir/"; do
    refused mkfolds -o "$path" "$BIN/mkfolds" -k 2 -o "$path" "$missing" "$META"
    refused seqbuild -o "$path" "$BIN/seqbuild" -o "$path" "$missing"
    refused bagavg -o "$path" "$BIN/bagavg" -o "$path" "$missing"
    refused bagavg --scores "$path" "$BIN/bagavg" -o "$W/s2.csv" -l "$W/lab.csv" \
        --scores "$path" "$missing"
    refused bagavg --h5-out "$path" "$BIN/bagavg" -o "$W/s2.csv" --h5-out "$path" "$missing"
done
echo "an output that is a folder (or ends in /): exit 2 before reading inputs, nothing left"

# 3. A parent that cannot be made or written: exit 5, the final path and the reason named.
cannot() { # name, final path, reason, then the command
    name=$1 final=$2 reason=$3
    shift 3
    run "$@"
    [ "$rc" = 5 ] || fail "$name -> $final: exit $rc, want 5: $(cat "$W/err")"
    grep -qF "cannot create $final: " "$W/err" && grep -qF "$reason" "$W/err" ||
        fail "$name: the message lacks 'cannot create $final' or '$reason': $(cat "$W/err")"
    no_temporaries "$name -> $final"
}
touch "$W/plain"
cannot mkfolds "$W/plain/f.h5" "plain exists and is not a folder" \
    "$BIN/mkfolds" -q -k 2 -o "$W/plain/f.h5" "$LABELS" "$META"
cannot seqbuild "$W/plain/sub/s.h5" "Not a directory" \
    "$BIN/seqbuild" -q -o "$W/plain/sub/s.h5" "$META"
cannot bagavg "$W/plain/s.csv" "plain exists and is not a folder" \
    "$BIN/bagavg" -q -o "$W/plain/s.csv" "$W/pred.h5"
echo "a parent that is a plain file: exit 5, 'cannot create FINAL: ...' and why"
mkdir "$W/ro"
chmod 555 "$W/ro"
if touch "$W/ro/probe" 2>/dev/null; then
    rm -f "$W/ro/probe"
    echo "note: the unwritable-folder case is skipped: chmod 555 does not stop writes here" \
        "(running as uid $(id -u))"
else
    cannot mkfolds "$W/ro/f.h5" "Permission denied" \
        "$BIN/mkfolds" -q -k 2 -o "$W/ro/f.h5" "$LABELS" "$META"
    cannot seqbuild "$W/ro/s.h5" "Permission denied" "$BIN/seqbuild" -q -o "$W/ro/s.h5" "$META"
    cannot bagavg "$W/ro/sub/s.csv" "Permission denied" \
        "$BIN/bagavg" -q -o "$W/ro/sub/s.csv" "$W/pred.h5"
    cannot "bagavg --scores" "$W/ro/sc.txt" "Permission denied" "$BIN/bagavg" -q \
        -o "$W/s3.csv" -l "$W/lab.csv" --scores "$W/ro/sc.txt" "$W/pred.h5"
    [ ! -e "$W/s3.csv" ] || fail "bagavg: -o written although --scores failed"
    echo "an unwritable folder (chmod 555): exit 5, 'cannot create FINAL: Permission denied'"
fi
chmod 755 "$W/ro"

# 4. dcm2jpg with nothing to convert leaves no folder of its own.
mkdir "$W/empty" "$W/pre"
run "$BIN/dcm2jpg" -o "$W/emo/sub" "$W/empty"
[ "$rc" = 3 ] || fail "dcm2jpg on an empty folder: exit $rc, want 3: $(cat "$W/err")"
[ ! -e "$W/emo" ] || fail "dcm2jpg: the folders it made are left: $(find "$W/emo")"
run "$BIN/dcm2jpg" -o "$W/pre" "$W/empty"
[ "$rc" = 3 ] && [ -d "$W/pre" ] && [ -z "$(ls -A "$W/pre")" ] ||
    fail "dcm2jpg into an existing folder, nothing converted: exit $rc, folder kept empty?"
echo "dcm2jpg, nothing converted: exit 3, its own OUTDIR removed, an existing one kept"

# 5. --baseline-holdout only shapes --baseline.
run "$BIN/bagavg" -o "$W/s4.csv" --baseline-holdout 1 "$W/pred.h5"
[ "$rc" = 2 ] && grep -qF -- "--baseline-holdout needs --baseline" "$W/err" &&
    [ ! -e "$W/s4.csv" ] ||
    fail "bagavg --baseline-holdout without --baseline: exit $rc: $(cat "$W/err")"
echo "bagavg --baseline-holdout without --baseline: exit 2"

# 6. The training programs' output folder given as an existing file: refused before any work
# (the inputs named do not exist, so a later check would say exit 3).
: > "$W/afile"
run "$BIN/cnntrain" -o "$W/afile" "$W/missing1" "$W/missing2"
[ "$rc" = 2 ] && grep -qF "exists and is not a folder" "$W/err" ||
    fail "cnntrain -o FILE: exit $rc, want 2: $(cat "$W/err")"
run "$BIN/lstmtrain" -o "$W/afile" "$W/missing1" "$W/missing2" "$W/missing3"
[ "$rc" = 2 ] && grep -qF "exists and is not a folder" "$W/err" ||
    fail "lstmtrain -o FILE: exit $rc, want 2: $(cat "$W/err")"
echo "cnntrain, lstmtrain -o naming a file: exit 2 before any work"
rm -rf "$W"
