# Sourced by the t_mpi_*.sh tests: the local, root-safe OpenMPI environment they share.
# mpi_require_or_skip: exit 77 (skip) when there is no mpirun or the build has no MPI.

fail() {
    echo "FAIL: $*"
    exit 1
}

mpi_require_or_skip() {
    if ! command -v mpirun >/dev/null || ! nm "$BUILD/libichpipe.a" | grep -q "U MPI_Init"
    then
        echo "skip: no mpirun, or a build without MPI (make MPI=0, or none found)"
        exit 77
    fi
}

# Tests run as root; only the loopback and shared memory are used; OpenMPI's own leaks are
# not ours to report under AddressSanitizer. One thread per rank and in the plain runs: the
# engine's sums depend on the thread count.
export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1 OMPI_MCA_btl=self,vader \
    OMPI_MCA_oob_tcp_if_include=lo ASAN_OPTIONS="${ASAN_OPTIONS:+$ASAN_OPTIONS:}detect_leaks=0"
export OMP_NUM_THREADS=1

# wait_for_log LOG PATTERN LAUNCHER_PID WHAT: wait (60 s at most) until LOG shows PATTERN;
# otherwise stop the launcher and fail naming WHAT.
wait_for_log() {
    waited=0
    until grep -qs "$2" "$1"; do
        sleep 0.1
        waited=$((waited + 1))
        [ "$waited" -lt 600 ] || { kill "$3"; fail "$4: training never started"; }
    done
}
