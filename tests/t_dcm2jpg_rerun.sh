#!/bin/sh
# dcm2jpg re-runs: existing outputs are kept (and not decoded again) unless --force, a
# missing one is redone, leftovers of a killed run are swept, -j 1 and -j 2 give the same
# bytes, a killed run leaves only complete files.
set -eu
: "${BIN:?}" "${WORK:?}" "${PY:=/usr/bin/python3}"
DATA=${DATA:-}
if [ -z "$DATA" ] || [ ! -d "$DATA/rsna_ich_app_series/dcm" ]; then
    echo "skip: the shared DICOM data (\$DATA) is absent"
    exit 77
fi
series=$DATA/rsna_ich_app_series/dcm
out=$WORK/out
fail() {
    echo "FAIL: $*"
    exit 1
}
# The summary line's counts: "converted N, existing N, skipped N, failed N, non-DICOM N".
counts() { grep -o 'converted [0-9]*, existing [0-9]*, skipped [0-9]*, failed [0-9]*' "$1"; }
statuses() {
    "$PY" -c 'import h5py, sys, collections
f = h5py.File(sys.argv[1], "r")
c = collections.Counter(s.decode() for s in f["status"][()])
print(" ".join("%s=%d" % kv for kv in sorted(c.items())))' "$1/meta.h5"
}
# How many JPEGs were written after the marker file was touched.
newer() { find "$out" -name '*.jpg' -newer "$WORK/marker" | wc -l; }
mark() {
    touch "$WORK/marker"
    sleep 0.05
}

"$BIN/dcm2jpg" -j 2 -o "$out" "$series" 2>"$WORK/run1.log" || fail "first run: exit $?"
[ "$(counts "$WORK/run1.log")" = "converted 24, existing 0, skipped 0, failed 0" ] ||
    fail "first run: $(tail -n 1 "$WORK/run1.log")"
[ "$(ls "$out" | grep -c '\.jpg$')" = 24 ] || fail "first run: not 24 JPEGs"
[ "$(statuses "$out")" = "ok=24" ] || fail "first run statuses: $(statuses "$out")"
echo "first run: 24 converted"

# A leftover temporary file of a killed run is swept; existing outputs are kept as they are.
touch "$out/.ID_0000.jpg.tmp-99999-1"
mark
"$BIN/dcm2jpg" -j 2 -o "$out" "$series" 2>"$WORK/run2.log" || fail "re-run: exit $?"
[ "$(counts "$WORK/run2.log")" = "converted 0, existing 24, skipped 0, failed 0" ] ||
    fail "re-run: $(tail -n 1 "$WORK/run2.log")"
[ ! -e "$out/.ID_0000.jpg.tmp-99999-1" ] || fail "stale temporary file not swept"
grep -q 'removed 1 unfinished' "$WORK/run2.log" || fail "sweep not reported"
[ "$(newer)" = 0 ] || fail "re-run rewrote $(newer) existing JPEGs"
[ "$(statuses "$out")" = "exists=24" ] || fail "re-run statuses: $(statuses "$out")"
echo "re-run: 24 existing, untouched; stale temporary file swept"

# One output missing: only that one is converted.
victim=$(ls "$out" | grep '\.jpg$' | head -n 1)
rm "$out/$victim"
"$BIN/dcm2jpg" -o "$out" "$series" 2>"$WORK/run3.log" || fail "partial re-run: exit $?"
[ "$(counts "$WORK/run3.log")" = "converted 1, existing 23, skipped 0, failed 0" ] ||
    fail "partial re-run: $(tail -n 1 "$WORK/run3.log")"
[ -s "$out/$victim" ] || fail "$victim not redone"
echo "partial re-run: the missing JPEG redone, 23 kept"

# --force rewrites every image.
mark
"$BIN/dcm2jpg" --force -o "$out" "$series" 2>"$WORK/run4.log" || fail "--force: exit $?"
[ "$(counts "$WORK/run4.log")" = "converted 24, existing 0, skipped 0, failed 0" ] ||
    fail "--force: $(tail -n 1 "$WORK/run4.log")"
[ "$(newer)" = 24 ] || fail "--force rewrote $(newer) of 24 JPEGs"
echo "--force: 24 rewritten"

# Threads change nothing in the output bytes.
"$BIN/dcm2jpg" -q -j 1 -o "$WORK/j1" "$series" || fail "-j 1: exit $?"
"$BIN/dcm2jpg" -q -j 2 -o "$WORK/j2" "$series" || fail "-j 2: exit $?"
for f in "$WORK"/j1/*.jpg; do
    cmp -s "$f" "$WORK/j2/$(basename "$f")" || fail "-j 1 and -j 2 differ on $(basename "$f")"
done
echo "-j 1 and -j 2: identical JPEGs"

# A run killed part way leaves complete JPEGs only, no temporary file and no table.
kill_out=$WORK/killed
"$BIN/dcm2jpg" -q --format ppm -o "$kill_out" "$series" "$DATA/rsna_george091" &
pid=$!
sleep 0.1
kill -TERM $pid 2>/dev/null || true
wait $pid 2>/dev/null || true
if [ -d "$kill_out" ]; then
    leftovers=$(ls -A "$kill_out" | grep -c '\.tmp-' || true)
    [ "$leftovers" = 0 ] || fail "killed run left $leftovers temporary files"
    for f in "$kill_out"/*.ppm; do
        [ -e "$f" ] || continue
        # A complete binary PPM of 512x512 RGB: header plus 786432 bytes.
        [ "$(wc -c <"$f")" -ge 786432 ] || fail "incomplete image $f"
    done
fi
echo "killed run: $(ls "$kill_out" 2>/dev/null | grep -c '\.ppm$' || true) complete images," \
    "no temporary files"

# List files: --list FILE and @FILE, comments and blank lines ignored.
list=$WORK/slices.list
{
    echo "# three slices of the series"
    ls "$series"/*.dcm | head -n 2
    echo
    ls "$series"/*.dcm | sed -n 3p
} >"$list"
"$BIN/dcm2jpg" -o "$WORK/listed" --list "$list" 2>"$WORK/list1.log" || fail "--list: exit $?"
[ "$(counts "$WORK/list1.log")" = "converted 3, existing 0, skipped 0, failed 0" ] ||
    fail "--list: $(tail -n 1 "$WORK/list1.log")"
"$BIN/dcm2jpg" -o "$WORK/listed2" @"$list" 2>"$WORK/list2.log" || fail "@FILE: exit $?"
[ "$(counts "$WORK/list2.log")" = "converted 3, existing 0, skipped 0, failed 0" ] ||
    fail "@FILE: $(tail -n 1 "$WORK/list2.log")"
echo "list files: --list and @FILE read, comments skipped"
