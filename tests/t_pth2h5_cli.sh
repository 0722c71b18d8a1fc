#!/bin/sh
# pth2h5's command line: --help, usage errors (exit 2), a missing input and a non-checkpoint
# (exit 3, the file named, nothing written, no temporary file left), --list writing nothing,
# an existing output replaced only by a complete one.
set -eu
: "${BIN:?}" "${WORK:?}" "${PY:=/usr/bin/python3}"
fail() {
    echo "FAIL: $*"
    exit 1
}
"$PY" -c 'import torch' 2>/dev/null || {
    echo "skip: python3 lacks torch (the fixtures are written with it)"
    exit 77
}
"$PY" tests/ref/pth_make.py "$WORK/fix" || fail "pth_make.py: exit $?"
out=$WORK/out
mkdir -p "$out"

"$BIN/pth2h5" --help >"$WORK/help" || fail "--help: exit $?"
grep -q -- "--arch" "$WORK/help" && grep -q -- "--allow-missing" "$WORK/help" ||
    fail "--help does not describe --arch and --allow-missing"
echo "ok    --help lists the options"

rc=0
"$BIN/pth2h5" "$WORK/fix/sd.pth" 2>"$WORK/err" || rc=$?
[ $rc -eq 2 ] || fail "no -o: exit $rc, expected 2"
rc=0
"$BIN/pth2h5" --arch resnet18 -o "$out/x.h5" "$WORK/fix/sd.pth" 2>"$WORK/err" || rc=$?
[ $rc -eq 2 ] || fail "--arch resnet18: exit $rc, expected 2"
echo "ok    usage errors exit 2"

rc=0
"$BIN/pth2h5" -o "$out/x.h5" "$WORK/nothere.pth" 2>"$WORK/err" || rc=$?
[ $rc -eq 3 ] && grep -q "nothere.pth" "$WORK/err" || fail "missing input: exit $rc"
printf 'not a checkpoint' >"$WORK/junk.pth"
rc=0
"$BIN/pth2h5" -o "$out/x.h5" "$WORK/junk.pth" 2>"$WORK/err" || rc=$?
[ $rc -eq 3 ] && grep -q "junk.pth: not a PyTorch checkpoint" "$WORK/err" ||
    fail "junk input: exit $rc: $(cat "$WORK/err")"
[ -z "$(ls -A "$out")" ] || fail "left in the output folder: $(ls -A "$out")"
echo "ok    missing and junk inputs exit 3 naming the file, nothing written"

"$BIN/pth2h5" -q --list "$WORK/fix/module.pth" >"$WORK/list" || fail "--list: exit $?"
n=$(wc -l <"$WORK/list")
[ "$n" -eq 176 ] || fail "--list printed $n lines, expected 176"
grep -q "^layer4.1.bn3.num_batches_tracked	int64	\[\]$" "$WORK/list" ||
    fail "--list lacks the scalar counter line"
[ -z "$(ls -A "$out")" ] || fail "--list wrote $(ls -A "$out")"
echo "ok    --list: $n tensors, writes nothing"

"$BIN/pth2h5" -q -o "$out/a.h5" "$WORK/fix/sd.pth" || fail "import: exit $?"
before=$(cksum <"$out/a.h5")
rc=0
"$BIN/pth2h5" -q -o "$out/a.h5" "$WORK/junk.pth" 2>/dev/null || rc=$?
[ $rc -eq 3 ] && [ "$(cksum <"$out/a.h5")" = "$before" ] ||
    fail "a failed import changed the existing output (exit $rc)"
[ "$(ls -A "$out")" = "a.h5" ] || fail "left in the output folder: $(ls -A "$out")"
echo "ok    a failed import leaves an existing output as it was"

# -o naming the input (either direction): exit 2, the input unchanged.
for args in "-o $out/a.h5 --to-pth $out/a.h5" "-o $WORK/fix/sd.pth $WORK/fix/sd.pth"; do
    input=${args##* }
    before=$(cksum <"$input")
    rc=0
    # shellcheck disable=SC2086
    "$BIN/pth2h5" -q $args 2>"$WORK/err" || rc=$?
    [ $rc -eq 2 ] && grep -q "is the input" "$WORK/err" &&
        [ "$(cksum <"$input")" = "$before" ] || fail "pth2h5 $args: exit $rc, $(cat "$WORK/err")"
done
echo "ok    -o naming the input: exit 2, the input unchanged (both directions)"
echo "all pth2h5 command-line checks passed"
