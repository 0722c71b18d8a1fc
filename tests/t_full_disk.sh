#!/bin/sh
# A full disk while writing: every program exits 5 (output not written) with a message, never
# crashes, and leaves no output or temporary file behind. Needs a small tmpfs (root); skipped
# when mounting is not allowed here.
set -u
: "${BIN:?}" "${WORK:?}"
fail() {
    echo "FAIL: $*"
    umount "$WORK/full" 2>/dev/null
    exit 1
}
mkdir -p "$WORK/full"
if ! mount -t tmpfs -o size=512k tmpfs "$WORK/full" 2>/dev/null; then
    echo "skip: cannot mount a small tmpfs here (needs root and mount rights)"
    exit 77
fi

"$BIN/mkphantom" -q -o "$WORK/ph" --series 4 --slices 6 --size 128 --seed 3 ||
    fail "mkphantom exited $?"
"$BIN/dcm2jpg" -q -o "$WORK/jpg" "$WORK/ph" || fail "dcm2jpg (setup) exited $?"

# Fill the disk, leaving a few kilobytes: enough to create files, not to finish them.
dd if=/dev/zero of="$WORK/full/fill" bs=1k count=490 2>/dev/null
dd if=/dev/zero of="$WORK/full/fill2" bs=1k count=64 2>/dev/null

check_full() {
    name=$1
    shift
    "$@" >"$WORK/$name.log" 2>&1
    rc=$?
    [ $rc -eq 5 ] || fail "$name: exit $rc, expected 5 (output could not be written)"
    grep -q "error:" "$WORK/$name.log" || fail "$name: no error message"
    left=$(find "$WORK/full" -mindepth 1 ! -name 'fill*' | head -n 3)
    [ -z "$left" ] || fail "$name left files on the full disk: $left"
    echo "ok    $name: exit 5, $(grep -m1 error: "$WORK/$name.log")"
}
check_full seqbuild "$BIN/seqbuild" -o "$WORK/full/sequences.h5" "$WORK/jpg/meta.h5"
check_full mkfolds "$BIN/mkfolds" -k 2 -o "$WORK/full/folds.h5" "$WORK/ph/labels.csv" \
    "$WORK/jpg/meta.h5"
check_full dcm2jpg "$BIN/dcm2jpg" -o "$WORK/full" "$WORK/ph"

umount "$WORK/full"
echo "full disk: all checks passed"
