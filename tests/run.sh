#!/bin/sh
# Runs every test and prints one line per test and a closing "N passed, N failed" line.
#   unit tests:   $BUILD/tests/test_*      (C, built from tests/unit/)
#   script tests: tests/t_*.sh             (sh; use $BIN, $DATA, $PY, $WORK)
#   python tests: tests/py/test_*.py       (Debian's /usr/bin/python3)
# A test passes with exit 0, is skipped with exit 77 (its last output line says why), and
# fails otherwise. TESTS="pattern" runs only the tests whose name contains the pattern.
set -u
root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"

BIN=$(cd "${BIN:-bin}" && pwd)
BUILD=$(cd "${BUILD:-build}" && pwd)
PY=${PY:-/usr/bin/python3}
DATA=${DATA:-$root/../shared/data/dicom}
if [ -d "$DATA" ]; then DATA=$(cd "$DATA" && pwd); fi
export BIN BUILD PY DATA
# Python reference code must not pick up a user's site packages over Debian's.
export PYTHONNOUSERSITE=1 PYTHONDONTWRITEBYTECODE=1

logdir=$(mktemp -d "${TMPDIR:-/tmp}/ichpipe-tests.XXXXXX")
passed=0 failed=0 skipped=0
failed_names=""

# The programs under test as they were at the start (name, inode, time). Another build into
# the same folders during the run (someone's make) replaces or removes them under the tests:
# a failure is then marked, and the programs that changed are named at the end.
programs_state() {
    stat -c '%n %i %Y' "$BIN"/* "$BUILD"/tests/test_* 2>/dev/null
}
programs_state >"$logdir/programs.start"
# Their names, the first six and a count of the others.
programs_changed() {
    programs_state | diff "$logdir/programs.start" - | sed -n 's/^[<>] \([^ ]*\) .*/\1/p' |
        sed 's|.*/||' | sort -u |
        awk '{ n++; if (n <= 6) s = s (n > 1 ? " " : "") $0 }
             END { if (n > 6) s = s " and " n - 6 " more"; printf "%s", s }'
}

run_one() {
    name=$1
    shift
    case "$name" in *"${TESTS:-}"*) ;; *) return ;; esac
    WORK="$logdir/$name.work"
    mkdir -p "$WORK"
    export WORK
    start=$(date +%s)
    "$@" >"$logdir/$name.log" 2>&1
    rc=$?
    secs=$(($(date +%s) - start))
    if [ $rc -eq 0 ]; then
        passed=$((passed + 1))
        printf 'PASS  %-40s %4ss\n' "$name" "$secs"
        rm -rf "$WORK"
    elif [ $rc -eq 77 ]; then
        skipped=$((skipped + 1))
        printf 'SKIP  %-40s %s\n' "$name" "$(tail -n 1 "$logdir/$name.log")"
        rm -rf "$WORK"
    else
        failed=$((failed + 1))
        failed_names="$failed_names $name"
        printf 'FAIL  %-40s %4ss (exit %d), last lines of %s:\n' "$name" "$secs" $rc \
            "$logdir/$name.log"
        tail -n 25 "$logdir/$name.log" | sed 's/^/      | /'
        changed=$(programs_changed)
        if [ -n "$changed" ]; then
            echo "      (programs changed by another build since the run began: $changed;" \
                "rerun this test alone)"
        fi
    fi
}

if [ ! -d "$DATA" ]; then
    echo "note: $DATA is absent: tests on the real DICOM files will be skipped"
fi

for t in "$BUILD"/tests/test_*; do
    [ -x "$t" ] || continue
    run_one "$(basename "$t")" "$t"
done
for t in tests/t_*.sh; do
    [ -f "$t" ] || continue
    run_one "$(basename "$t" .sh)" sh "$t"
done
for t in tests/py/test_*.py; do
    [ -f "$t" ] || continue
    run_one "$(basename "$t" .py)" "$PY" "$t"
done

changed=$(programs_changed)
if [ -n "$changed" ]; then
    echo "warning: another build changed or removed programs during the run: $changed"
fi
[ $failed -eq 0 ] && [ -z "${KEEP_LOGS:-}" ] && rm -rf "$logdir"
[ $failed -eq 0 ] || echo "failed:$failed_names (logs in $logdir)"
echo "tests: $passed passed, $failed failed, $skipped skipped"
if [ $((passed + failed + skipped)) -eq 0 ]; then
    echo "no test matched TESTS=\"${TESTS:-}\" (it is one substring of the test names)" >&2
    exit 2
fi
[ $failed -eq 0 ]
