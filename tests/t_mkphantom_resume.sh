#!/bin/sh
# mkphantom after a killed run: the same command again finishes it with the bytes of an
# uninterrupted run (cmp of every file); another command refuses the folder (exit 3), and
# with --force removes every file of the killed run but keeps a user's file; a completed run
# is still refused without --force. A --labels file in a missing folder gets its folder; one
# that cannot be made stops the run (exit 5) before anything is written. Another dataset's
# labels CSV is never removed nor silently overwritten; an edited marker's relative labels
# path is taken inside OUTDIR; dead writers' temporaries alone do not make OUTDIR "not empty";
# refusals make no folder; a second run into a live run's folder is refused; sweeps follow no
# link and leave other files' temporaries. About 5 s.
set -eu
: "${BIN:?}" "${WORK:?}"
fail() {
    echo "FAIL: $*"
    exit 1
}
[ -x "$BIN/mkphantom" ] || fail "$BIN/mkphantom is missing"

# Run A: about a second of rendering with -j 1, so that a kill lands part-way.
run_a="--series 24 --slices 8-12 --size 256 --seed 31 --test-fraction 0.25 --prevalence 0.9"
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

# Start run A into $1 (further options after it), wait until some slices are in place.
start_part_way() {
    dir=$1
    shift
    # shellcheck disable=SC2086
    "$BIN/mkphantom" -q -j 1 $run_a -o "$dir" "$@" &
    pid=$!
    polls=0
    while [ "$(ndcm "$dir" 2>/dev/null || echo 0)" -lt 10 ]; do
        polls=$((polls + 1))
        [ $polls -lt 1500 ] || fail "no slices in $dir after 30 s"
        sleep 0.02
    done
}

# Run A into $1 (further options after it), SIGKILLed part-way.
kill_part_way() {
    start_part_way "$@"
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
grep -q "prevalence 0.9; " "$WORK/err" ||
    fail "the refusal does not show the settings readably: $(cat "$WORK/err")"
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

# A PID that is no process now: a killed writer's, as in its temporaries' names.
dead_pid=$(sh -c 'echo $$')

# 6. A killed run's --labels L.csv that another dataset then wrote: --force over the killed
# run keeps it (not every ID in it is the killed run's), with a warning naming it.
mkdir -p "$WORK/s6"
kill_part_way "$WORK/s6/A" --labels "$WORK/s6/L.csv"
# shellcheck disable=SC2086
"$BIN/mkphantom" -q $run_b -o "$WORK/s6/B" --labels "$WORK/s6/L.csv" ||
    fail "run B with the killed run's --labels: exit $?"
# shellcheck disable=SC2086
"$BIN/mkphantom" $run_b -o "$WORK/s6/A" --force 2>"$WORK/err" ||
    fail "--force over the killed run: exit $?"
cmp -s "$WORK/s6/L.csv" "$WORK/ref_b/labels.csv" ||
    fail "--force over the killed run removed or changed run B's $WORK/s6/L.csv"
grep -q "kept $WORK/s6/L.csv" "$WORK/err" || fail "no warning naming L.csv: $(cat "$WORK/err")"
echo "ok: --force over a killed run kept another dataset's labels: $(grep kept "$WORK/err")"

# 7. The same --labels case, then the killed run's own command: refused (exit 3), L.csv kept;
# with --force it replaces L.csv and finishes the run byte for byte.
mkdir -p "$WORK/s7"
kill_part_way "$WORK/s7/A" --labels "$WORK/s7/L.csv"
# shellcheck disable=SC2086
"$BIN/mkphantom" -q $run_b -o "$WORK/s7/B" --labels "$WORK/s7/L.csv" || fail "s7 run B: exit $?"
rc=0
# shellcheck disable=SC2086
"$BIN/mkphantom" -q -j 2 $run_a -o "$WORK/s7/A" --labels "$WORK/s7/L.csv" 2>"$WORK/err" ||
    rc=$?
[ $rc -eq 3 ] || fail "resume over another dataset's --labels: exit $rc, expected 3"
cmp -s "$WORK/s7/L.csv" "$WORK/ref_b/labels.csv" || fail "the refused resume changed L.csv"
echo "ok: resume over another dataset's labels refused: $(cat "$WORK/err")"
# shellcheck disable=SC2086
"$BIN/mkphantom" -q -j 2 $run_a -o "$WORK/s7/A" --labels "$WORK/s7/L.csv" --force ||
    fail "resume --force: exit $?"
cmp -s "$WORK/s7/L.csv" "$WORK/ref_a/labels.csv" || fail "resume --force: L.csv is not run A's"
mv "$WORK/s7/L.csv" "$WORK/s7/A/labels.csv"
same_tree "$WORK/s7/A" "$WORK/ref_a"

# 8. An edited marker with a relative labels entry: taken inside OUTDIR, not in the current
# folder (both hold run A's labels; only OUTDIR's goes).
kill_part_way "$WORK/s8"
sed -i 's/^labels .*/labels mine.csv/' "$WORK/s8/.mkphantom-unfinished"
cp "$WORK/ref_a/labels.csv" "$WORK/s8/mine.csv"
mkdir -p "$WORK/cwd8"
cp "$WORK/ref_a/labels.csv" "$WORK/cwd8/mine.csv"
# shellcheck disable=SC2086
(cd "$WORK/cwd8" && "$BIN/mkphantom" -q $run_b -o "$WORK/s8" --force) ||
    fail "--force over the edited marker: exit $?"
[ -f "$WORK/cwd8/mine.csv" ] || fail "a relative labels entry removed ./mine.csv"
same_tree "$WORK/s8" "$WORK/ref_b"

# 9. Killed while writing the marker or trying the folder: only dead writers' temporaries
# left; the same command then runs (exit 0), not "not empty".
mkdir -p "$WORK/s9"
: >"$WORK/s9/.mkphantom-unfinished.tmp-$dead_pid-0"
: >"$WORK/s9/.series.csv.tmp-$dead_pid-1"
# shellcheck disable=SC2086
"$BIN/mkphantom" -q $run_b -o "$WORK/s9" 2>"$WORK/err" ||
    fail "OUTDIR with dead writers' temporaries only: exit $? ($(cat "$WORK/err"))"
same_tree "$WORK/s9" "$WORK/ref_b"

# 10. Refusals make no folder: a non-empty OUTDIR with --labels in new folders (exit 3),
# --labels naming a folder (exit 2), -o naming a file (exit 2).
check_refused() { # want_rc, what must not exist, command...
    want=$1
    absent=$2
    shift 2
    rc=0
    "$@" 2>"$WORK/err" || rc=$?
    [ $rc -eq "$want" ] || fail "$*: exit $rc, expected $want ($(cat "$WORK/err"))"
    [ ! -e "$absent" ] || fail "$*: refused but made $absent"
    echo "ok: refused (exit $rc), no $absent: $(cat "$WORK/err")"
}
mkdir -p "$WORK/s10/ph1"
: >"$WORK/s10/ph1/other.txt"
: >"$WORK/s10/plain"
# shellcheck disable=SC2086
check_refused 3 "$WORK/s10/newx" "$BIN/mkphantom" -q $run_b -o "$WORK/s10/ph1" \
    --labels "$WORK/s10/newx/y/L.csv"
# shellcheck disable=SC2086
check_refused 2 "$WORK/s10/out2" "$BIN/mkphantom" -q $run_b -o "$WORK/s10/out2" \
    --labels "$WORK/s10/newdir/"
# shellcheck disable=SC2086
check_refused 2 "$WORK/s10/plain/labels.csv" "$BIN/mkphantom" -q $run_b -o "$WORK/s10/plain"

# 11. A second run into a folder a live run is writing: refused (exit 3), same command or
# --force with other settings, and the live run's files stay; then it finishes.
start_part_way "$WORK/s11"
for extra in "" "--force"; do
    rc=0
    # shellcheck disable=SC2086
    "$BIN/mkphantom" -q $run_a -o "$WORK/s11" $extra 2>"$WORK/err" || rc=$?
    [ $rc -eq 3 ] || fail "same command into a live run's folder: exit $rc, expected 3"
    rc=0
    # shellcheck disable=SC2086
    "$BIN/mkphantom" -q $run_b -o "$WORK/s11" $extra 2>>"$WORK/err" || rc=$?
    [ $rc -eq 3 ] || fail "other settings $extra into a live run's folder: exit $rc, expected 3"
done
grep -q "another mkphantom is writing into $WORK/s11" "$WORK/err" ||
    fail "the refusal does not say why: $(cat "$WORK/err")"
wait $pid || fail "the live run A failed beside refused ones: exit $?"
same_tree "$WORK/s11" "$WORK/ref_a"
echo "ok: runs into a live run's folder refused: $(head -n 1 "$WORK/err")"

# 12. Sweeps follow no symbolic link and, outside OUTDIR, take only the labels CSV's own
# temporaries of dead writers.
mkdir -p "$WORK/s12/ext" "$WORK/s12/lab"
kill_part_way "$WORK/s12/A" --labels "$WORK/s12/lab/L.csv"
folder=$(sed -n '$s/ .*//p' "$WORK/s12/A/.mkphantom-unfinished")
rm -rf "${WORK:?}/s12/A/$folder"
ln -s ../ext "$WORK/s12/A/$folder"
for f in ext/.other.txt lab/.notes.txt lab/.L.csv; do
    : >"$WORK/s12/$f.tmp-$dead_pid-3"
done
# shellcheck disable=SC2086
"$BIN/mkphantom" -q $run_b -o "$WORK/s12/A" --force || fail "s12 --force: exit $?"
[ -e "$WORK/s12/ext/.other.txt.tmp-$dead_pid-3" ] ||
    fail "the sweep followed a symbolic link into ext/"
[ -e "$WORK/s12/lab/.notes.txt.tmp-$dead_pid-3" ] ||
    fail "the sweep removed another file's temporary in the labels folder"
[ ! -e "$WORK/s12/lab/.L.csv.tmp-$dead_pid-3" ] ||
    fail "the sweep kept a dead writer's temporary of L.csv"
echo "ok: sweeps kept ext/ (through a link) and lab/.notes.txt's temporary, removed L.csv's"

# 13. Plurals: a one-series run replaced with --force.
"$BIN/mkphantom" -q --series 1 --slices 2 --size 32 -o "$WORK/s13" || fail "s13: exit $?"
"$BIN/mkphantom" --series 1 --slices 2 --size 32 -o "$WORK/s13" --force 2>"$WORK/err" ||
    fail "s13 --force: exit $?"
grep -q "its 1 series folder and" "$WORK/err" || fail "plural: $(grep replaced "$WORK/err")"
echo "PASS"
