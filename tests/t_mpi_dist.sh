#!/bin/sh
# The distribution layer (common/dist.h) under mpirun, OpenMPI kept on this host (shared
# memory and loopback only):
#  - every check of test_mpi_dist (sums over buckets, broadcast, shares, gathers in the
#    original order, the equal-everywhere check, the CPU backend's all-reduce) with 2 and 3
#    ranks (--oversubscribe: this machine has 2 cores);
#  - a rank that stops (SIGSTOP) before a barrier: with ICH_DIST_TIMEOUT=3 the job exits
#    non-zero within 30 s (measured 3-4 s), rank 0 naming rank 1 as the one that did not come
#    (its roll call); with rank 0 stopped, rank 1 names itself and the call it gave up in;
#  - a rank that exits 3 before a barrier: the job exits 3 within 30 s (measured 1.3 s).
# Needs no shared data; skipped when mpirun or the build's MPI is missing.
set -eu
: "${BUILD:?}" "${WORK:?}"
. "$(dirname "$0")/mpi_env.sh"
prog=$BUILD/tests/test_mpi_dist
[ -x "$prog" ] || fail "$prog is missing"
mpi_require_or_skip

for n in 2 3; do
    timeout 120 mpirun --oversubscribe -np $n "$prog" >"$WORK/np$n.out" 2>&1 ||
        { cat "$WORK/np$n.out"; fail "test_mpi_dist with $n ranks: exit $?"; }
    grep -q "^ok: 0 failed checks over $n ranks" "$WORK/np$n.out" || fail "no verdict ($n)"
    echo "ok    $n ranks: $(grep -c . "$WORK/np$n.out") lines, all checks pass:"
    grep -E "^rank [0-9]: float sum|^gather of 103" "$WORK/np$n.out" | sed 's/^/        /'
done

# drill NAME OPTION RANK EXPECTED-EXIT PATTERN: OPTION aimed at RANK; the job ends within
# 30 s with that status (any non-zero for "nonzero") and its output says PATTERN.
drill() {
    name=$1 option=$2 rank=$3 expected=$4 pattern=$5
    out="$WORK/drill-$option-$rank.out"
    start=$(date +%s)
    rc=0
    ICH_DIST_TIMEOUT=3 timeout 60 mpirun --oversubscribe -np 2 "$prog" "$option" "$rank" \
        >"$out" 2>&1 || rc=$?
    secs=$(($(date +%s) - start))
    [ "$rc" -ne 124 ] || fail "$name: the job hung (killed by timeout after 60 s)"
    if [ "$expected" = nonzero ]; then [ "$rc" -ne 0 ]; else [ "$rc" -eq "$expected" ]; fi ||
        { cat "$out"; fail "$name: exit $rc, expected $expected"; }
    [ "$secs" -le 30 ] || fail "$name: took $secs s"
    grep -q "$pattern" "$out" || { cat "$out"; fail "$name: no '$pattern' in the output"; }
    # The waiting rank's barrier must not return. (A stopped rank may pass its own once
    # mpirun wakes it to end it: the other had arrived.)
    ! grep -q "rank $((1 - rank)): the barrier returned" "$out" ||
        fail "$name: the waiting rank went on"
    echo "ok    $name: exit $rc after $secs s; $(grep -m 1 "$pattern" "$out" | cut -c 1-110)"
}
drill "stopped rank 1" --stop-rank 1 nonzero "rank(s) 1 of 2 did not reach MPI_Barrier"
drill "stopped rank 0" --stop-rank 0 nonzero "rank 1 of 2 waited more than 3 s in MPI_Barrier"
drill "exiting rank 1" --exit-rank 1 3 "Exit code: *3"
