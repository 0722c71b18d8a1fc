#!/bin/sh
# dcm2jpg re-runs: existing outputs are kept (and not decoded again) unless --force, a
# missing one is redone, leftovers of a killed run are swept, -j 1 and -j 2 give the same
# bytes, a killed run leaves only complete files. On a 24-slice mkphantom series; -j 1 vs
# -j 2 also on the shared data's challenge series when it is there.
set -eu
: "${BIN:?}" "${WORK:?}" "${PY:=/usr/bin/python3}"
DATA=${DATA:-}
fail() {
    echo "FAIL: $*"
    exit 1
}
"$BIN/mkphantom" -q -o "$WORK/phantom" --series 1 --slices 24 --size 64 --seed 8 ||
    fail "mkphantom: exit $?"
series=$(find "$WORK/phantom" -mindepth 1 -maxdepth 1 -type d)
out=$WORK/out
# The summary line's counts: "converted N, existing N, skipped N, failed N, non-DICOM N".
counts() { grep -o 'converted [0-9]*, existing [0-9]*, skipped [0-9]*, failed [0-9]*' "$1"; }
statuses() {
    "$PY" -c 'import h5py, sys, collections
f = h5py.File(sys.argv[1], "r")
c = collections.Counter(s.decode() for s in f["status"][()])
print(" ".join("%s=%d" % kv for kv in sorted(c.items())))' "$1/meta.h5"
}
# How many files in folder $1 match the name pattern $2 (hidden ones included).
count() { find "$1" -maxdepth 1 -name "$2" 2>/dev/null | wc -l; }
# How many JPEGs were written after the marker file was touched.
newer() { find "$out" -name '*.jpg' -newer "$WORK/marker" | wc -l; }
mark() {
    touch "$WORK/marker"
    sleep 0.05
}
# -j 1 and -j 2 write the same bytes.
same_threads() {
    "$BIN/dcm2jpg" -q -j 1 -o "$WORK/$1-j1" "$2" || fail "$1 -j 1: exit $?"
    "$BIN/dcm2jpg" -q -j 2 -o "$WORK/$1-j2" "$2" || fail "$1 -j 2: exit $?"
    n=0
    for f in "$WORK/$1-j1"/*.jpg; do
        cmp -s "$f" "$WORK/$1-j2/$(basename "$f")" ||
            fail "$1: -j 1 and -j 2 differ on $(basename "$f")"
        n=$((n + 1))
    done
    [ "$n" -gt 0 ] || fail "$1: no JPEG written"
    echo "$1: -j 1 and -j 2 write identical JPEGs ($n)"
}

"$BIN/dcm2jpg" -j 2 -o "$out" "$series" 2>"$WORK/run1.log" || fail "first run: exit $?"
[ "$(counts "$WORK/run1.log")" = "converted 24, existing 0, skipped 0, failed 0" ] ||
    fail "first run: $(tail -n 1 "$WORK/run1.log")"
[ "$(count "$out" '*.jpg')" = 24 ] || fail "first run: not 24 JPEGs"
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
victim=$(find "$out" -maxdepth 1 -name '*.jpg' | sort | head -n 1)
victim=$(basename "$victim")
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
same_threads phantom "$series"
if [ -n "$DATA" ] && [ -d "$DATA/rsna_ich_app_series/dcm" ]; then
    same_threads challenge "$DATA/rsna_ich_app_series/dcm"
else
    echo "skip: -j 1 and -j 2 on the challenge series (\$DATA absent)"
fi

# A run killed part way (as soon as its first image is there) leaves complete images only, no
# temporary file and no table.
size=512
"$BIN/mkphantom" -q -o "$WORK/big" --series 1 --slices 40 --size $size --seed 9 -j 2 ||
    fail "mkphantom: exit $?"
kill_out=$WORK/killed
"$BIN/dcm2jpg" -q -j 1 --format ppm -o "$kill_out" "$WORK/big" &
pid=$!
tries=0
until [ "$(count "$kill_out" '*.ppm')" -gt 0 ] || [ $tries -ge 500 ]; do
    sleep 0.01
    tries=$((tries + 1))
done
kill -TERM $pid 2>/dev/null || true
wait $pid 2>/dev/null || true
images=$(count "$kill_out" '*.ppm')
if [ -d "$kill_out" ]; then
    leftovers=$(count "$kill_out" '*.tmp-*')
    [ "$leftovers" = 0 ] || fail "killed run left $leftovers temporary files"
    for f in "$kill_out"/*.ppm; do
        [ -e "$f" ] || continue
        # A complete binary PPM of size x size RGB: header plus the pixels.
        [ "$(wc -c <"$f")" -ge $((size * size * 3)) ] || fail "incomplete image $f"
    done
    if [ "$images" -lt 40 ] && [ -e "$kill_out/meta.h5" ]; then
        fail "killed run wrote meta.h5 with $images of 40 images"
    fi
fi
echo "killed run: $images of 40 complete images, no temporary files, no table unless complete"

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
