#!/bin/sh
# mkphantom after a killed run: the same command again finishes it with the bytes of an
# uninterrupted run (cmp of every file); another command refuses the folder (exit 3), and
# with --force removes every file of the killed run but keeps a user's file; a completed run
# is still refused without --force. A --labels file in a missing folder gets its folder; one
# that cannot be made stops the run (exit 5) before anything is written. A few seconds.
set -eu
: "${BIN:?}" "${WORK:?}"
fail() {
    echo "FAIL: $*"
    exit 1
}
[ -x "$BIN/mkphantom" ] || fail "$BIN/mkphantom is missing"

# Run A: about a second of rendering with -j 1, so that a kill lands part-way.
run_a="--series 24 --slices 8-12 --size 256 --seed 31 --test-fraction 0.25"
# Run B: another dataset, quick.
run_b="--series 6 --slices 4 --size 64 --seed 9"

# Every file below $1, hidden ones included, as sorted relative paths.
files() { (cd "$1" && find . -type f | sort); }
ndcm() { find "$1" -name '*.dcm' | wc -l; }

# Same file list and the same bytes in every file: $1 (checked) against $2 (reference).
same_tree() {
    files "$1" >"$WORK/got.list"
    files "$2" >"$WORK/want.list"
    diff "$WORK/want.list" "$WORK/got.list" >"$WORK/list.diff" ||
        fail "$1 and $2 hold other files: $(head -n 6 "$WORK/list.diff" | tr '\n' ' ')"
    while read -r f; do
        cmp -s "$1/$f" "$2/$f" || fail "$1/$f differs from $2/$f"
    done <"$WORK/want.list"
    echo "ok: $1 matches $2 ($(wc -l <"$WORK/want.list") files, cmp)"
}

# Start run A into $1, wait until some slices are in place, then SIGKILL it.
kill_part_way() {
    # shellcheck disable=SC2086
    "$BIN/mkphantom" -q -j 1 $run_a -o "$1" &
    pid=$!
    polls=0
    while [ "$(ndcm "$1" 2>/dev/null || echo 0)" -lt 10 ]; do
        polls=$((polls + 1))
        [ $polls -lt 1500 ] || fail "no slices in $1 after 30 s"
        sleep 0.02
    done
    kill -KILL $pid 2>/dev/null || fail "run A ended before it could be killed (too fast?)"
    wait $pid 2>/dev/null || true
    [ -f "$1/.mkphantom-unfinished" ] || fail "$1: no marker of the unfinished run"
    [ ! -f "$1/series.csv" ] || fail "$1: series.csv written before the kill"
    echo "killed run A with $(ndcm "$1") of $want_dcm slices in $1"
}

# Uninterrupted references.
# shellcheck disable=SC2086
"$BIN/mkphantom" -q -j 1 $run_a -o "$WORK/ref_a" || fail "run A: exit $?"
# shellcheck disable=SC2086
"$BIN/mkphantom" -q $run_b -o "$WORK/ref_b" || fail "run B: exit $?"
want_dcm=$(ndcm "$WORK/ref_a")
[ "$want_dcm" -ge 190 ] || fail "run A made $want_dcm slices, expected 192-288"

# 1. Killed, then the same command (other -j): the whole output, byte for byte.
kill_part_way "$WORK/k1"
# shellcheck disable=SC2086
"$BIN/mkphantom" -q -j 2 $run_a -o "$WORK/k1" || fail "same command after the kill: exit $?"
same_tree "$WORK/k1" "$WORK/ref_a"

# 2. A completed run: the same command is refused without --force, as before.
rc=0
# shellcheck disable=SC2086
"$BIN/mkphantom" -q $run_a -o "$WORK/k1" 2>"$WORK/err" || rc=$?
[ $rc -eq 3 ] || fail "rerun over a completed run: exit $rc, expected 3"
echo "ok: a completed run's folder is refused (exit 3): $(cat "$WORK/err")"

# 3. Killed, a user's file added, then another command: refused without --force (naming the
# folder); with --force only run B's files and the user's file remain.
kill_part_way "$WORK/k2"
echo "my notes" >"$WORK/k2/notes.txt"
rc=0
# shellcheck disable=SC2086
"$BIN/mkphantom" -q $run_b -o "$WORK/k2" 2>"$WORK/err" || rc=$?
[ $rc -eq 3 ] || fail "another command without --force: exit $rc, expected 3"
grep -q "k2 holds an unfinished mkphantom run" "$WORK/err" ||
    fail "the refusal does not name the folder: $(cat "$WORK/err")"
echo "ok: another command without --force refused (exit 3)"
# shellcheck disable=SC2086
"$BIN/mkphantom" -q $run_b --force -o "$WORK/k2" || fail "another command --force: exit $?"
[ "$(cat "$WORK/k2/notes.txt")" = "my notes" ] || fail "--force lost the user's notes.txt"
rm "$WORK/k2/notes.txt"
same_tree "$WORK/k2" "$WORK/ref_b"
echo "ok: --force after the kill left $(ndcm "$WORK/k2") slices (run B's) and the user's file"

# 4. --labels in a missing folder: made, and the run completes.
# shellcheck disable=SC2086
"$BIN/mkphantom" -q $run_b -o "$WORK/l1" --labels "$WORK/new/sub/lab.csv" ||
    fail "--labels in a missing folder: exit $?"
cmp -s "$WORK/new/sub/lab.csv" "$WORK/ref_b/labels.csv" ||
    fail "--labels $WORK/new/sub/lab.csv differs from run B's labels.csv"
[ ! -e "$WORK/l1/.mkphantom-unfinished" ] || fail "l1: marker left after a complete run"
echo "ok: --labels in a missing folder: folder made, labels identical to run B's"

# 5. --labels under a regular file: exit 5 before anything is written.
: >"$WORK/plainfile"
rc=0
# shellcheck disable=SC2086
"$BIN/mkphantom" -q $run_b -o "$WORK/l2" --labels "$WORK/plainfile/lab.csv" 2>"$WORK/err" ||
    rc=$?
[ $rc -eq 5 ] || fail "--labels under a file: exit $rc, expected 5"
left=$(find "$WORK/l2" -mindepth 1 2>/dev/null | wc -l)
[ "$left" -eq 0 ] || fail "--labels under a file left $left entries in $WORK/l2"
echo "ok: --labels under a file: exit 5, nothing written ($(cat "$WORK/err"))"
echo "PASS"
